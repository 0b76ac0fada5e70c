"""{name}: counts the words of a text, or of a file under /data, and lists the most frequent
ones. A Guild tool in Python; replace this with what your tool does.

Build: componentize-py -d wit -w guild-tool componentize app -o {artifact}.wasm
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, types

INPUT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "text": {"type": "string", "description": "The text to look at."},
        "path": {"type": "string", "description": "Or a file to read, under the /data mount."},
        "top": {"type": "integer", "minimum": 0, "maximum": 100, "default": 3,
                "description": "How many of the most frequent words to return."},
    },
}


def fail(kind, message):
    """A tool error: raise it from run. kind is ToolError_InvalidInput, _Failed or _Denied."""
    return Err(kind(message))


def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except PermissionError as e:
        # The sandbox refused: a path outside the mount (`..`, a symbolic link out of it).
        raise fail(types.ToolError_Denied, f"{path}: {e.strerror or e}")
    except (OSError, UnicodeDecodeError) as e:
        raise fail(types.ToolError_Failed, f"{path}: {e}")


class Tool(exports.Tool):
    def describe(self):
        return types.ToolInfo(
            name="{name}",
            version="0.1.0",
            description="Counts the words of a text or a file and lists the most frequent ones.",
            input_schema=json.dumps(INPUT_SCHEMA),
            output_schema=None,
            capabilities=types.Capabilities(
                dirs=[types.DirRequest("/data", types.Access.READ_ONLY, "files whose words to count")],
                hosts=[],
                secrets=[],
                gpu=False,
            ),
        )

    def run(self, input):
        try:
            request = json.loads(input)
        except json.JSONDecodeError as e:
            raise fail(types.ToolError_InvalidInput, f"input is not JSON: {e}")
        if not isinstance(request, dict) or set(request) - set(INPUT_SCHEMA["properties"]):
            raise fail(types.ToolError_InvalidInput, "input must be an object with text or path, and top")
        top = request.get("top", 3)
        if not isinstance(top, int) or not 0 <= top <= 100:
            raise fail(types.ToolError_InvalidInput, "top must be an integer from 0 to 100")
        if isinstance(request.get("text"), str):
            text = request["text"]
        elif isinstance(request.get("path"), str):
            text = read_text(request["path"])
        else:
            raise fail(types.ToolError_InvalidInput, "give text, or path to a file under /data")

        counts = {}
        for word in text.lower().split():
            counts[word] = counts.get(word, 0) + 1
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
        words = sum(counts.values())
        log.log(log.Level.INFO, f"counted {words} words")
        return json.dumps({"words": words, "most_frequent": [[w, n] for w, n in ranked]})
