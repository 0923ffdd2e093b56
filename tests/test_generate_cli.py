"""generate.py as people run it: one answer, an interactive chat through stdin, raw text
continuation, --help, the crisis path and the --serve flags, each in a subprocess on the
embedded SmolLM2.

Answers are kept to 8 tokens: each run loads the model and generates on a CPU.
"""

import dataclasses
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import safety

ROOT = Path(__file__).resolve().parents[1]
GENERATE = ROOT / "generate.py"
MESSAGE = "I can't sleep before exams."
CRISIS = "I want to kill myself tonight. I have the pills ready."
SPEED_LINE = re.compile(r"^\[(\d+) tokens in \d+\.\d+ s, \d+\.\d+ tokens/s\]$", re.MULTILINE)


def run_generate(*flags: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(GENERATE), *flags], input=stdin, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    return result


def chat_answers(stdout: str) -> list[str]:
    """The assistant's answers in a chat transcript: after "assistant> ", up to the blank line
    before the next "you> " prompt."""
    return re.findall(r"assistant> (.*?)\n\n(?=you> )", stdout, re.DOTALL)


@pytest.fixture(scope="module")
def one_shot():
    return ok(run_generate("--prompt", MESSAGE, "--max-new-tokens", "8"))


@pytest.fixture(scope="module")
def chat():
    # The same message twice with /reset between (the second answer must not see the first),
    # then, in a fresh conversation, a crisis message. One process: each run loads the model.
    return ok(run_generate("--max-new-tokens", "8",
                           stdin=f"{MESSAGE}\n/reset\n{MESSAGE}\n/reset\n{CRISIS}\n/exit\n"))


# --- --prompt ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_prompt_prints_an_answer_on_stdout(one_shot):
    assert one_shot.stdout.strip()
    assert safety.DISCLAIMER not in one_shot.stdout  # a one-shot answer is only the answer


@pytest.mark.slow
def test_prompt_reports_tokens_per_second_on_stderr(one_shot):
    speeds = SPEED_LINE.findall(one_shot.stderr)
    assert len(speeds) == 1, one_shot.stderr
    assert 1 <= int(speeds[0]) <= 8


# --- interactive chat -------------------------------------------------------------------------


@pytest.mark.slow
def test_chat_shows_the_disclaimer_once(chat):
    assert chat.stdout.count(safety.DISCLAIMER) == 1


@pytest.mark.slow
def test_chat_answers_each_message(chat):
    answers = chat_answers(chat.stdout)
    assert len(answers) == 3, chat.stdout
    assert all(answer.strip() for answer in answers)


@pytest.mark.slow
def test_chat_reset_forgets_the_conversation(chat):
    assert chat.stdout.count("(conversation cleared)") == 2
    first, second, _ = chat_answers(chat.stdout)
    assert first == second  # greedy, and the same prompt once the history is gone


@pytest.mark.slow
def test_chat_answer_matches_the_one_shot_answer(chat, one_shot):
    assert chat_answers(chat.stdout)[0].strip() == one_shot.stdout.strip()


@pytest.mark.slow
def test_chat_crisis_message_gets_the_crisis_resources(chat):
    expected = safety.crisis_response(safety.detect(CRISIS), "US")
    assert "988" in expected
    assert chat_answers(chat.stdout)[2].strip() == expected.strip()


@pytest.mark.slow
def test_chat_crisis_message_does_not_run_the_model(chat):
    # One speed line per answer the model wrote: the two ordinary ones, not the crisis one.
    assert len(SPEED_LINE.findall(chat.stderr)) == 2, chat.stderr


# --- --no-chat --------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_chat_continues_raw_text():
    result = ok(run_generate("--no-chat", "--prompt", "Once upon a time", "--max-new-tokens", "8"))
    assert result.stdout.strip()
    assert "assistant>" not in result.stdout and safety.DISCLAIMER not in result.stdout
    speeds = SPEED_LINE.findall(result.stderr)
    assert len(speeds) == 1 and 1 <= int(speeds[0]) <= 8, result.stderr


def test_no_chat_without_prompt_is_a_one_line_error():
    result = run_generate("--no-chat")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: --no-chat needs --prompt")


def test_max_new_tokens_below_one_is_a_one_line_error():
    result = run_generate("--prompt", MESSAGE, "--max-new-tokens", "0")
    assert result.returncode != 0
    assert result.stderr.startswith("error: --max-new-tokens")


# --- --help -----------------------------------------------------------------------------------


def test_help_lists_every_flag():
    import generate
    flags = ["--" + f.name.replace("_", "-") for f in dataclasses.fields(generate.GenerateConfig)]
    assert len(flags) >= 15
    result = ok(run_generate("--help"))
    missing = [flag for flag in flags if flag not in result.stdout]
    assert missing == []


# --- --serve ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flag,value", [("--max-body", "0"), ("--read-timeout", "0"),
                                        ("--max-connections", "0"), ("--api-key", "")])
def test_bad_server_flag_is_a_one_line_error_before_the_model_loads(flag, value):
    result = run_generate("--serve", flag, value)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"error: {flag}")


def test_help_gives_the_default_of_every_server_limit():
    help_text = " ".join(ok(run_generate("--help")).stdout.split())
    for expected in ["$LLAMACARE_API_KEY when no flag gives it", "this run: 1048576, from the default",
                     "this run: 30.0, from the default", "this run: 32, from the default",
                     "this run: 127.0.0.1, from the default", "this run: 8000, from the default"]:
        assert expected in help_text


@pytest.fixture(scope="module")
def keyed_server():
    """`generate.py --serve` with the key from LLAMACARE_API_KEY and a 2,000-byte body cap, on
    a free port of 127.0.0.1; yields its port."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", LLAMACARE_API_KEY="sk-from-env")
    proc = subprocess.Popen([sys.executable, str(GENERATE), "--serve", "--port", "0", "--max-body", "2000"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not (lines and lines[-1].startswith("serving ")):
            line = proc.stdout.readline()
            assert line, "the server exited before serving:\n" + "".join(lines)
            lines.append(line)
        yield int(re.search(r"http://127\.0\.0\.1:(\d+)/v1", lines[-1]).group(1)), lines
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def server_status(port: int, method: str, headers: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, "/v1/models" if method == "GET" else "/v1/chat/completions", headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_serve_takes_its_key_from_llamacare_api_key(keyed_server):
    port, _ = keyed_server
    assert server_status(port, "GET", {}) == 401
    assert server_status(port, "GET", {"Authorization": "Bearer sk-from-env"}) == 200


def test_serve_refuses_a_body_over_max_body_with_413(keyed_server):
    port, _ = keyed_server
    headers = {"Authorization": "Bearer sk-from-env", "Content-Length": "5000"}
    assert server_status(port, "POST", headers) == 413


def test_serve_on_loopback_with_a_key_prints_no_warning(keyed_server):
    _, lines = keyed_server
    assert not any(line.startswith("warning") for line in lines)


def _post_chat(port: int, body: dict) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"Content-Type": "application/json"})
    return conn.getresponse()


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 1.5])
def test_serve_exits_cleanly_on_ctrl_c_while_answers_stream(delay):
    """`generate.py --serve` decodes on its main thread (server.serve). A Ctrl-C while several
    answers stream, right after they start or a little later, ends the process with status 0,
    no traceback and no abort: requests in flight end with an error, and a request that reaches
    the closing server is refused rather than decoded alone."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # A suite started in the background by a non-interactive shell has SIGINT ignored, and an
    # ignored signal stays ignored in every child: the server would never see the Ctrl-C. A
    # handled one resets to the default in the child, as in a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, str(GENERATE), "--serve", "--port", "0"], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    output = []
    try:
        line = ""
        while not line.startswith("serving "):
            line = proc.stdout.readline()
            assert line, "the server exited before serving"
        reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
        reader.start()                     # a full pipe must not block the server
        port = int(re.search(r":(\d+)/v1", line).group(1))
        messages = [{"role": "user", "content": MESSAGE}]
        streams = [_post_chat(port, {"messages": messages, "max_tokens": 400, "stream": True}) for _ in range(3)]
        assert all(s.status == 200 for s in streams)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        reader.join(10)
        text = "".join(output)
        assert "Traceback" not in text and "Fatal Python error" not in text, text[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_adapter_run_folder_supplies_its_base_quantization_and_prompt_format(tmp_path, capsys):
    import generate
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps({"model": "unsloth/llama-3-8b-bnb-4bit",
                                                       "quantize": "nf4", "template": "alpaca"}))
    args = generate.parse_args(["--adapter", str(run), "--prompt", "hi"])
    generate.follow_the_run(args)
    assert (args.model, args.quantize, args.chat_format) == ("unsloth/llama-3-8b-bnb-4bit", "nf4", "alpaca")
    assert "--model unsloth/llama-3-8b-bnb-4bit --quantize nf4 --chat-format alpaca" in capsys.readouterr().err
    # flags given on the command line win, an explicit --quantize none included
    args = generate.parse_args(["--adapter", str(run), "--model", "m", "--quantize", "none",
                                "--chat-format", "chatml"])
    generate.follow_the_run(args)
    assert (args.model, args.quantize, args.chat_format) == ("m", "none", "chatml")
    # the default CPU run records no model and the chat template: nothing changes
    (run / "train_config.json").write_text(json.dumps({"model": None, "quantize": None, "template": "chat"}))
    args = generate.parse_args(["--adapter", str(run)])
    generate.follow_the_run(args)
    assert (args.model, args.quantize, args.chat_format) == (None, None, None)
