from fabric.scheduling.classify import RuleClassifier, features


def chat(*contents, **extra):
    msgs = []
    for i, c in enumerate(contents):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": c})
    return {"messages": msgs, **extra}


def test_simple_question_is_small():
    d = RuleClassifier().classify(chat("What are your opening hours?", max_tokens=64))
    assert d.tier == "small" and d.reasons == []


def test_code_is_large_and_says_why():
    d = RuleClassifier().classify(chat("Fix this:\n```python\ndef f(x):\n    return x/0\n```"))
    assert d.tier == "large" and "code" in d.reasons


def test_math_and_tools_and_json():
    c = RuleClassifier()
    assert c.classify(chat("Prove that the equation x^2 = 2 has no rational root")).tier == "large"
    assert c.classify(chat("weather?", tools=[{"type": "function"}])).reasons == ["tools"]
    assert "json_output" in c.classify(chat("list", response_format={"type": "json_object"})).reasons


def test_long_and_deep_conversations_add_up():
    c = RuleClassifier()
    assert c.classify(chat("x" * 7000)).tier == "small"  # one weak signal is not enough
    long_deep = chat(*(["step"] * 13), max_tokens=2000)
    d = c.classify(long_deep)
    assert d.tier == "large" and set(d.reasons) == {"deep_conversation", "long_output"}


def test_features_handle_completions_and_content_parts():
    assert features({"prompt": "abc", "max_tokens": 5}).prompt_chars == 3
    f = features({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    assert f.prompt_chars == 2 and f.turns == 1


def test_threshold_is_configurable():
    assert RuleClassifier(threshold=0.1).classify(chat("x" * 7000)).tier == "large"
