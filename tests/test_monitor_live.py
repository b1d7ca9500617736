"""Live monitoring: generate_live's scores equal project_tokens on the same sequence, its ids equal
plain (and steered) generation, hooks are removed on errors, and the `traitflow monitor` command."""

import io

import pytest
import torch
import yaml

from traitflow.cli import main
from traitflow.model.chat import prompt_ids
from traitflow.model.generate import generate
from traitflow.model.hooks import project_tokens
from traitflow.monitor.live import colour_code, generate_live, run_monitor
from traitflow.steer import Steer, steered_generate

HIDDEN = 64
TEXTS = [("Hello there", None), ("Tell me about cats, dogs and trains.", "Be cheerful.")]


def _vectors(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, HIDDEN, generator=torch.Generator().manual_seed(seed)) * 3.0


def _hook_counts(model) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


@pytest.fixture(scope="module")
def llama(tiny_loaded):
    return tiny_loaded("llama")


@pytest.mark.parametrize("text,system", TEXTS)
def test_scores_equal_project_tokens_and_ids_equal_generate(llama, text, system):
    ids = prompt_ids(llama, text, system)
    vectors = _vectors(3)
    layers = [0, 2, 2]
    seen = []
    live = generate_live(llama, ids, vectors, layers, max_new_tokens=10,
                         on_token=lambda i, piece, scores: seen.append((i, piece, scores)))
    plain = generate(llama, [ids], max_new_tokens=10)[0]
    assert live.response_ids == plain.response_ids
    assert live.text == plain.text
    n = len(live.response_ids)
    assert n > 0 and live.scores.shape == (n, 3)
    assert [i for i, _, _ in seen] == list(range(n))
    assert torch.allclose(torch.tensor([s for _, _, s in seen]), live.scores)
    assert "".join(live.tokens) == live.text
    ref = project_tokens(llama, [(ids, live.response_ids)], layers, vectors[:, None, :].expand(3, 3, HIDDEN).clone())[0]
    expected = torch.stack([ref.scores[t, t, ref.prompt_len:] for t in range(3)], dim=1)  # [n, traits]
    assert torch.allclose(live.scores, expected, atol=1e-4), (live.scores - expected).abs().max()


def test_other_component_matches_project_tokens(llama):
    ids = prompt_ids(llama, "Hi", None)
    vectors = _vectors(1, seed=3)
    live = generate_live(llama, ids, vectors, [1], max_new_tokens=6, components=["attn_out"])
    ref = project_tokens(llama, [(ids, live.response_ids)], [1], vectors[:, None, :], component="attn_out")[0]
    assert torch.allclose(live.scores[:, 0], ref.scores[0, 0, ref.prompt_len:], atol=1e-4)


def test_steered_ids_equal_steered_generate(llama):
    # transformers may keep hooks of its own (output recording) on a shared model: compare to them
    before = _hook_counts(llama.model)
    prompts = [prompt_ids(llama, t, s) for t, s in TEXTS]
    v = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(7))
    for config in [(Steer(v, 1, 8.0),), (Steer(v, 2, -10.0, "all"), Steer(v, 0, 4.0, "prompt"))]:
        expected = steered_generate(llama, prompts, [config], [0, 0], max_new_tokens=10)
        plain = generate(llama, prompts, max_new_tokens=10)
        for p, exp in zip(prompts, expected, strict=True):
            live = generate_live(llama, p, _vectors(2), [1, 2], max_new_tokens=10, steer=config)
            assert live.response_ids == exp.response_ids
        assert any(e.response_ids != b.response_ids for e, b in zip(expected, plain, strict=True))
    assert _hook_counts(llama.model) == before


def test_hooks_removed_after_an_exception(llama):
    before = _hook_counts(llama.model)
    ids = prompt_ids(llama, "Hello there", None)
    v = torch.randn(HIDDEN)

    def boom(i, piece, scores):
        if i == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate_live(llama, ids, _vectors(2), [0, 2], max_new_tokens=8, steer=(Steer(v, 1, 3.0),), on_token=boom)
    assert _hook_counts(llama.model) == before
    with pytest.raises(ValueError):
        generate_live(llama, ids, _vectors(2), [0], max_new_tokens=8)
    assert _hook_counts(llama.model) == before


def test_colour_code_scale():
    assert colour_code(0.0, 1.0) == colour_code(5.0, 0.0) == 238
    assert colour_code(1.0, 1.0) == 46 and colour_code(-1.0, 1.0) == 196
    assert colour_code(0.5, 1.0) in (22, 28, 34, 40) and colour_code(-0.5, 1.0) in (52, 88, 124, 160)


# --------------------------------------------------------------------------- the command
def _monitor(capsys, monkeypatch, root, *extra):
    monkeypatch.delenv("TRAITFLOW_STORAGE", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    code = main(["monitor", "demo", "chat", "Tell me about chess.", "--root", str(root), "--max-new-tokens", "12",
                 "--threshold", "1", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_monitor_command_on_the_toy_demo(toy_demo, capsys, monkeypatch):
    root = toy_demo["root"]
    code, out, err = _monitor(capsys, monkeypatch, root)
    assert code == 0, err
    assert "\x1b[" not in out  # capsys is not a TTY: no colour
    lines = out.splitlines()
    for trait in ("toy/formality", "toy/optimism", "toy/refusal"):
        assert any(line.startswith(f"{trait} L") and "mean" in line and "min" in line and "max" in line for line in lines)
    assert any(line.startswith("flagged (|score| > 1)") for line in lines)
    reply = lines[lines.index("") + 1]  # the generated text, after the header's blank line
    assert len(reply.replace("▲", "").replace("▼", "").split()) >= 3

    code, steered, err = _monitor(capsys, monkeypatch, root, "--steer", "toy/optimism:-100")
    assert code == 0, err
    assert "steer toy/optimism" in steered
    reply_steered = steered.splitlines()[steered.splitlines().index("") + 1]
    assert reply_steered != reply
    keywords = yaml.safe_load((root / "datasets/traits/toy/optimism/trait.yaml").read_text())["keywords"]["negative"]
    assert any(k in reply_steered.lower() for k in keywords), reply_steered

    buffer = io.StringIO()
    result = run_monitor(root, "demo", "chat", "Tell me about chess.", traits="toy/optimism", max_new_tokens=6,
                         out=buffer, colour=True)
    assert "\x1b[48;5;" in buffer.getvalue() and result.scores.shape == (len(result.response_ids), 1)


def test_monitor_user_mistakes_are_one_line(toy_demo, capsys, monkeypatch):
    root = toy_demo["root"]
    for args in (["monitor", "demo", "nope", "Hi"], ["monitor", "demo", "chat", "Hi", "--traits", "toy/none"],
                 ["monitor", "demo", "chat", "Hi", "--steer", "toy/optimism"]):
        monkeypatch.delenv("TRAITFLOW_STORAGE", raising=False)
        code = main([*args, "--root", str(root)])
        err = capsys.readouterr().err
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


def test_monitor_without_vectors_says_which_stage_to_run(toy_demo, tmp_path, capsys, monkeypatch):
    code = main(["monitor", "demo", "chat", "Hi", "--root", str(toy_demo["root"]), "--storage", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert code == 2 and "traitflow run demo --stages extraction" in err
