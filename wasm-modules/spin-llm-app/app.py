"""A Spin LLM guest: turns a request into a prompt, asks the host through Spin's
``fermyon:spin/llm@2.0.0`` interface (``spin_sdk.llm``), and post-processes the answer.

Request (JSON): ``{"task": "chat" | "completion" | "embedding", "model": NAME,
"messages": [...] | "prompt": TEXT | "input": [TEXT...], "max_tokens", "temperature",
"top_p", "top_k", "repeat_penalty"}``. Response (JSON): ``{"text", "prompt_tokens",
"completion_tokens"}`` or ``{"embeddings", "prompt_tokens"}``.
"""

import json

import wit_world
from componentize_py_types import Err
from spin_sdk import llm

END_OF_TURN = "<|im_end|>"


def chat_prompt(messages):
    """ChatML, the format SmolLM2-Instruct was trained on."""
    parts = []
    for m in messages:
        parts.append("<|im_start|>" + m["role"] + "\n" + m["content"].strip() + END_OF_TURN + "\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def clean(text):
    """Cut at the end-of-turn marker and trim the whitespace around the answer."""
    cut = text.find(END_OF_TURN)
    return (text if cut < 0 else text[:cut]).strip()


class WitWorld(wit_world.WitWorld):
    def handle(self, request: str) -> str:
        try:
            req = json.loads(request)
            task = req.get("task", "chat")
            model = req["model"]
            if task == "embedding":
                result = llm.generate_embeddings(model, list(req["input"]))
                return json.dumps(
                    {
                        "embeddings": [list(v) for v in result.embeddings],
                        "prompt_tokens": result.usage.prompt_token_count,
                    }
                )
            prompt = chat_prompt(req["messages"]) if task == "chat" else req["prompt"]
            params = llm.InferencingParams(
                max_tokens=int(req.get("max_tokens") or 100),
                temperature=float(req.get("temperature", 0.8)),
                top_p=float(req.get("top_p", 0.9)),
                top_k=int(req.get("top_k", 40)),
                repeat_penalty=float(req.get("repeat_penalty", 1.1)),
            )
            result = llm.infer_with_options(model, prompt, params)
            text = clean(result.text) if task == "chat" else result.text
            return json.dumps(
                {
                    "text": text,
                    "prompt_tokens": result.usage.prompt_token_count,
                    "completion_tokens": result.usage.generated_token_count,
                }
            )
        except Err as e:
            raise Err("the host's llm failed: " + repr(e.value)) from None
        except (KeyError, TypeError, ValueError) as e:
            raise Err("bad request: " + repr(e)) from None
