"""What the JSON fuzz tests (tests/data/test_fuzz.py, tests/lora/test_adapter_fuzz.py) share."""


def json_slots(node, holder, key):
    """Every (container, key) in a JSON document, the document itself included: the places a
    fuzz test may replace a value."""
    yield holder, key
    if isinstance(node, dict):
        for child_key, child in node.items():
            yield from json_slots(child, node, child_key)
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from json_slots(child, node, index)
