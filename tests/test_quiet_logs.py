"""Quiet logs: known third-party noise is hidden from stage logs and `ck` output, kept in a side file
and counted in one line; real warnings, errors and tracebacks stay."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from conftest import write_spec

from cruijff_kit._base import noise
from cruijff_kit._base.noise import LineFilter, count_records, quiet

# Messages exactly as the libraries print them (copied from a real stage log of this project).
TORCHAO = (b"Failed to load /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: "
           b"Could not load this library: /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64"
           b"-linux-gnu.so\n")
PYTREE = (b"W1203 13:51:43.677000 19702 torch/utils/_pytree.py:630] <enum 'KernelPreference'> is an Enum subclass "
          b"and is now natively supported by torch.compile as an opaque value type. Calling register_constant() on "
          b"Enum subclasses is deprecated and will be an error in a future release.\n")
GRAD_CKPT = (b"/venv/lib/python3.11/site-packages/transformers/modeling_utils.py:3303: FutureWarning: "
             b"`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` "
             b"instead.\n  warnings.warn(\n")
BANNER = (b"inspect_ai v0.3.285\n- hooks enabled: 1\n  cruijff_kit_inspect/cruijff_kit_sample_progress: cruijff-kit: "
          b"count finished \nsamples for the progress display\n\n")
TOKENIZERS = (b"huggingface/tokenizers: The current process just got forked, after parallelism has already been used. "
              b"Disabling parallelism to avoid deadlocks...\nTo disable this warning, you can either:\n\t- Avoid using "
              b"`tokenizers` before the fork if possible\n\t- Explicitly set the environment variable "
              b"TOKENIZERS_PARALLELISM=(true | false)\n")


def run_filter(*pieces: bytes) -> tuple[bytes, list[bytes]]:
    """Feed the pieces in turn; what is written and the hidden messages."""
    f = LineFilter()
    out = b"".join(f.feed(p) for p in pieces) + f.flush()
    return out, [text for _noise, text in f.hidden]


# --------------------------------------------------------------------------- the stream filter
def test_noise_lines_are_hidden_and_everything_else_is_kept_byte_for_byte() -> None:
    real = b"[trl] step=1 train_loss=6.99\n"
    odd = b"caf\xe9 \xff not utf-8\n"  # bytes that are not text pass as they are
    progress = b"\r 50%|#####     |\r100%|##########|\n"
    out, hidden = run_filter(TORCHAO + real, PYTREE, odd, GRAD_CKPT + progress, BANNER, TOKENIZERS, b"last\n")
    assert out == real + odd + progress + b"last\n"
    assert hidden == [TORCHAO, PYTREE, GRAD_CKPT, BANNER, TOKENIZERS]


def test_a_real_warning_and_the_source_line_of_a_real_warning_stay() -> None:
    real = b"/x/train.py:12: UserWarning: 3 rows have an empty answer\n  warnings.warn(\n"
    out, hidden = run_filter(GRAD_CKPT, real)
    assert out == real and hidden == [GRAD_CKPT]


def test_a_traceback_that_holds_a_noise_pattern_is_never_hidden() -> None:
    tb = (b"Traceback (most recent call last):\n  File \"/x/stage.py\", line 3, in train\n"
          b"    raise RuntimeError(msg)\n" + b"RuntimeError: " + TORCHAO + b"  " + TORCHAO +
          b"\n")
    out, hidden = run_filter(tb, TORCHAO)
    assert out == tb, out  # every line of it, up to its empty line
    assert hidden == [TORCHAO]  # after the traceback, noise is hidden again
    chained = b"Traceback (most recent call last):\n  File \"a.py\", line 1\n" + TORCHAO
    out, hidden = run_filter(chained, PYTREE)
    assert out == chained + PYTREE and hidden == []  # its exception line, and what follows up to an empty line


def test_a_traceback_as_rich_draws_it_is_never_hidden() -> None:
    box = ("\u256d\u2500\u2500\u2500 Traceback (most recent call last) \u2500\u2500\u2500\u256e\n"
           "\u2502 /x/stage.py:3 in train                     \u2502\n"
           "\u2502 Failed to load /x/torchao/_C_mxfp8.so: no  \u2502\n"
           "\u2570\u2500\u2500\u2500\u2500\u2500\u2500\u2500\u2500\u2500\u2500\u256f\n"
           "RuntimeError: Failed to load /x/torchao/_C_mxfp8.so: no\n\n").encode()
    out, hidden = run_filter(box, TORCHAO)
    assert out == box and hidden == [TORCHAO]


def test_colour_codes_do_not_hide_a_message_from_the_list() -> None:
    coloured = b"\x1b[1;34minspect_ai v0.3.285\x1b[0m\n\x1b[90m- hooks enabled: 1\x1b[0m\n\n"
    out, hidden = run_filter(coloured, b"real\n")
    assert out == b"real\n" and hidden == [coloured]


def test_a_partial_line_or_a_block_that_does_not_end_is_written_as_it_is() -> None:
    # a noise line cut in two pieces (its start written out early): nothing of it is hidden
    out, hidden = run_filter(TORCHAO[:20], TORCHAO[20:])
    assert out == TORCHAO and hidden == []
    # a banner without its empty line is not the known block: shown whole at the end
    out, hidden = run_filter(b"inspect_ai v0.3.285\n- hooks enabled: 1\n", b"real line\n")
    assert out == b"inspect_ai v0.3.285\n- hooks enabled: 1\nreal line\n" and hidden == []


def test_many_lines_in_one_write_are_judged_as_when_written_one_by_one() -> None:
    # Large outputs (``ck status --json`` of 2,000 stages) arrive in a few big writes: the filter judges
    # them as it judges lines written one at a time, whatever they hold.
    import random

    plain = [b"  {\"run\": \"r%d\", \"state\": \"done\"},\n" % i for i in range(300)]
    tb = (b"Traceback (most recent call last):\n  File \"a.py\", line 1\nValueError: x\n" + TORCHAO + b"\n")
    pieces = [*plain, TORCHAO, PYTREE, GRAD_CKPT, BANNER, TOKENIZERS, tb,
              b"\x1b[1;34minspect_ai v0.3.285\x1b[0m\n\n", b"a\r\n", "caf\u00e9\n".encode()]
    rng = random.Random(7)
    for _ in range(20):
        rng.shuffle(pieces)
        whole = b"".join(pieces)
        one_by_one = run_filter(*(line for piece in pieces for line in piece.splitlines(keepends=True)))
        cuts = sorted(rng.sample(range(1, len(whole)), 5))
        chunks = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
        assert run_filter(whole) == one_by_one
        # cut anywhere: a line whose start was written early passes whole, as it does one by one
        out, hidden = run_filter(*chunks)
        assert len(out) + sum(len(h) for h in hidden) == len(whole)


def test_a_traceback_written_whole_keeps_the_noise_line_written_after_it_in_its_exception() -> None:
    tb = b"Traceback (most recent call last):\n  File \"a.py\", line 1\n    go()\nRuntimeError: boom\n"
    out, hidden = run_filter(b"ok\n" * 50 + tb, TORCHAO, b"\n", TORCHAO)
    assert out == b"ok\n" * 50 + tb + TORCHAO + b"\n" and hidden == [TORCHAO]


def test_the_noise_list_matches_none_of_the_project_s_own_messages() -> None:
    for line in ("[ck] 2026-12-03T13:52:13Z stage train of run glad-puffin-ba1682 started",
                 "[trl] lora sft on cpu (fp32), loss on assistant tokens, 120 train rows, world size 1",
                 "Error: the trainer finished without writing adapters for epochs [0]",
                 "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
                 "/x/y.py:3: FutureWarning: `evaluation_strategy` is deprecated, use `eval_strategy`",
                 "UserWarning: 'set_vital' is deprecated elsewhere"):
        assert noise.match(line) is None, line


# --------------------------------------------------------------------------- in-process (warnings, logging)
def test_in_process_noise_warnings_and_records_go_to_the_side_file_real_ones_are_shown(tmp_path: Path) -> None:
    shown: list[str] = []
    side = tmp_path / "logs" / "train.noise.log"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda m, c, f, n, file=None, line=None: shown.append(f"{c.__name__}: {m}")
        with quiet(side) as sink:
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
                          stacklevel=1)
            warnings.warn("3 rows have an empty answer", UserWarning, stacklevel=1)
            logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_mxfp8.so: Could not load")
            try:
                raise OSError("boom")
            except OSError:  # a noise record that carries a traceback is kept
                logging.getLogger("torchao").exception("Failed to load /x/torchao/_C_a.so: boom")
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
                      stacklevel=1)  # outside the block: shown
    assert shown == ["UserWarning: 3 rows have an empty answer",
                     "FutureWarning: `is_gradient_checkpointing` is deprecated and will be removed in v6."]
    assert sink.count == 2 and count_records(side) == 2
    text = side.read_text()
    assert "FutureWarning: `is_gradient_checkpointing`" in text and "torchao: Failed to load /x/torchao/_C_mxfp8.so" in text
    assert "_C_a.so" not in text and "empty answer" not in text


def test_show_noise_hides_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CK_SHOW_NOISE", "1")
    shown: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda m, c, f, n, file=None, line=None: shown.append(str(m))
        with quiet(tmp_path / "n.log") as sink:
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
                          stacklevel=1)
    assert len(shown) == 1 and sink.count == 0 and not (tmp_path / "n.log").exists()


# --------------------------------------------------------------------------- a real stage (toy plugin)
SPEC = """
experiment: {name}
model: {{path: org/m}}
dataset: {{plugin: toy-data}}
train: {{plugin: toy, epochs: 1, emit_noise: true{extra}}}
"""


def _logs(run: Path, stage: str = "train") -> tuple[str, str]:
    return tuple((run / "logs" / f"{stage}.{s}").read_bytes().decode() for s in ("out", "err"))  # type: ignore[return-value]


@pytest.mark.integration
def test_a_stage_log_keeps_the_real_warning_and_counts_the_hidden_noise(tmp_path, with_toy, ck) -> None:
    """Through `ck run` (local scheduler, the stage's log filter): the toy trainer emits a known noise
    warning, a known noise line written to descriptor 2 as C code does, and a real warning."""
    from ck_toy import NOISE_LINE, NOISE_WARNING, REAL_WARNING

    res = ck("run", str(write_spec(tmp_path, SPEC.format(name="quiet", extra=""))))
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = (tmp_path / "runs" / "quiet" / "runs").iterdir()
    out, err = _logs(run)
    side = run / "logs" / "train.noise.log"
    assert f"UserWarning: {REAL_WARNING}\n" in err, err
    assert NOISE_WARNING not in out + err and NOISE_LINE.decode() not in out + err
    assert err.endswith(f"ck: hid 2 known third-party messages (full text: {side})\n"), err
    text = side.read_text()
    assert f"FutureWarning: {NOISE_WARNING}\n" in text and NOISE_LINE.decode() in text
    assert REAL_WARNING not in text and count_records(side) == 2

    res = ck("run", str(write_spec(tmp_path, SPEC.format(name="loud", extra=""), name="loud.yaml")),
             env={"CK_SHOW_NOISE": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = (tmp_path / "runs" / "loud" / "runs").iterdir()
    _out, err = _logs(run)
    assert NOISE_WARNING in err and NOISE_LINE.decode() in err and REAL_WARNING in err
    assert "ck: hid" not in err and not (run / "logs" / "train.noise.log").exists()


@pytest.mark.integration
def test_a_failing_stage_keeps_its_traceback_even_when_it_holds_a_noise_pattern(tmp_path, with_toy, ck) -> None:
    message = "Failed to load /opt/torchao/_C_mxfp8.so: the kernel this run needs"
    spec = write_spec(tmp_path, SPEC.format(name="fails", extra=f", fail_with: '{message}'"))
    res = ck("run", str(spec))
    assert res.returncode == 1, res.stdout + res.stderr
    (run,) = (tmp_path / "runs" / "fails" / "runs").iterdir()
    _out, err = _logs(run)
    assert "Traceback (most recent call last):" in err and f"RuntimeError: {message}\n" in err, err
    assert "ck: hid 2 known third-party messages" in err  # the noise before it is still hidden


def test_ck_itself_hides_a_command_s_noise_and_counts_it(tmp_path: Path) -> None:
    """A `ck` command whose libraries log known noise and warn a real warning (c: CLI output)."""
    code = textwrap.dedent("""
        import logging, warnings
        import click
        from cruijff_kit._cli.main import cli, main

        @cli.command("noisy")
        def noisy():
            logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_mxfp8.so: Could not load")
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
            warnings.warn("the real one", UserWarning)
            click.echo("result")
            from rich import print as rich_print  # as inspect-ai prints its banner
            rich_print("[blue][bold]inspect_ai v0.3.285[/bold][/blue]\\n[bright_black]- hooks enabled: 1\\n"
                       "  cruijff_kit_inspect/progress: count samples[/bright_black]\\n")
            click.echo("after")

        main(["noisy"])
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "TMPDIR": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert res.stdout == "result\nafter\n"
    assert "UserWarning: the real one" in res.stderr and "torchao" not in res.stderr
    assert "is_gradient_checkpointing" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ck: hid 3 known third-party messages (full text: "), res.stderr
    side = Path(last.split("full text: ", 1)[1].rstrip(")"))
    assert side.is_relative_to(tmp_path) and count_records(side) == 3
    assert "inspect_ai v0.3.285\n- hooks enabled: 1\n" in side.read_text()

    loud = subprocess.run([sys.executable, "-c", code.replace('main(["noisy"])', 'main(["--show-noise", "noisy"])')],
                          capture_output=True, text=True, timeout=120)
    assert "torchao" in loud.stderr and "is_gradient_checkpointing" in loud.stderr and "ck: hid" not in loud.stderr
    assert "hooks enabled" in loud.stdout


@pytest.mark.integration
def test_a_stage_run_in_process_without_a_log_filter_prints_its_own_count_line(tmp_path, with_toy) -> None:
    """As `ck eval` runs stages (in its own process, output on the terminal): the noise warning is
    hidden in-process and the stage ends with the count line naming `logs/<stage>.noise.log`; a line
    that C code writes straight to descriptor 2 cannot be caught there and stays."""
    from ck_toy import NOISE_LINE, NOISE_WARNING, REAL_WARNING

    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import write_experiment
    from cruijff_kit._engine.spec import load_spec

    plan = make_plan(load_spec(write_spec(tmp_path, SPEC.format(name="inproc", extra=""))))
    write_experiment(plan)
    run = plan.runs[0].layout.root
    code = f"from cruijff_kit.engine import run_stage; run_stage({str(run)!r}, 'train')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    side = run / "logs" / "train.noise.log"
    assert REAL_WARNING in res.stderr and NOISE_WARNING not in res.stderr and NOISE_LINE.decode() in res.stderr
    assert res.stderr.endswith(f"ck: hid 1 known third-party message (full text: {side})\n"), res.stderr
    assert count_records(side) == 1 and NOISE_WARNING in side.read_text()
