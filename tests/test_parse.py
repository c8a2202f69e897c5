"""parse_response: the final fenced block is the kernel, the text after it the summary, <think> excluded.

    python -m pytest tests/test_parse.py -q
"""
from kernel_eval.parse import parse_response

CODE = "import torch\nclass ModelNew(torch.nn.Module):\n    def forward(self, x):\n        return x\n"


def test_final_block_is_kernel_and_text_after_is_summary():
    text = (f"Plan: first try.\n```python\nold = 1\n```\nThen better:\n```python\n{CODE}```\n"
            "I fused the loop and vectorized it.\n")
    p = parse_response(text)
    assert p.error is None and p.code == CODE and p.language == "python"
    assert p.summary == "I fused the loop and vectorized it."


def test_think_blocks_excluded_from_code_and_summary():
    text = (f"<think>maybe ```python\nbad = 1\n``` no</think>Answer:\n```cpp\n{CODE}```\n"
            "<think>hidden</think>Summary here.")
    p = parse_response(text)
    assert p.code == CODE and p.language == "cpp"
    assert p.summary == "Summary here."
    assert "bad = 1" in p.thought and "hidden" in p.thought


def test_response_starting_inside_think():
    """Chat templates that open <think> in the prompt: the text has only the closing tag."""
    p = parse_response(f"reasoning ```python\nx = 1\n```\n</think>\n```\n{CODE}```\ndone")
    assert p.code == CODE and p.summary == "done" and p.thought.startswith("reasoning")


def test_unterminated_think_is_a_format_error_with_message():
    p = parse_response(f"<think>long reasoning ```python\n{CODE}``` cut off by the token lim")
    assert p.error == "format" and p.code is None and "<think>" in p.summary
    assert "long reasoning" in p.thought


def test_no_block_empty_block_unclosed_block():
    for text, words in [("just prose, no code", "no fenced code block"),
                        ("```python\n   \n```\nsummary", "empty"),
                        (f"```python\n{CODE}", "never closed"),
                        ("", "no fenced code block")]:
        p = parse_response(text)
        assert p.error == "format" and p.code is None and words in p.summary, (text, p)
        assert "```python" in p.summary          # tells the model the expected format


def test_longer_fences_and_inner_backticks():
    inner = 'DOC = """\n```\nnot a fence for a 4-tick block\n```\n"""\n'
    p = parse_response(f"````python\n{inner}````\nok")
    assert p.code == inner and p.summary == "ok"


def test_never_raises_on_odd_input():
    for text in [None, 123, "```", "``````", "<think>", "</think>", "```\n```\n```", "\x00```python\n\x00\n```"]:
        p = parse_response(text)
        assert p.error in (None, "format")
