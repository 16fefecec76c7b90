"""aesthetic_score (tiny random timm / CLIP encoders) and vlm_judge (a real loopback HTTP server)."""
import base64
import io
import json
import logging
import math
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import workbench.rewards  # noqa: F401,E402  (registers the rewards)
from workbench.registry import ConfigError  # noqa: E402
from workbench.rewards import RewardPipeline, build_reward  # noqa: E402
from workbench.rewards.aesthetic import preprocess, save_head  # noqa: E402
from workbench.rewards.vlm_judge import parse_scores  # noqa: E402

ENCODER = "timm:test_resnet"  # ~0.4M parameters, 96-dim pooled features
DIM = 96


def _images(n=3, size=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(size, size + 8 * i, 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A randomly initialised test_resnet (seed 123, unlike the reward's own seed-0 init) saved
    as safetensors, and the model itself."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(123)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()
    path = tmp_path_factory.mktemp("enc") / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path), model


def _linear_head(tmp_path, weight, bias, name="head.safetensors"):
    path = tmp_path / name
    save_head(str(path), [(np.asarray(weight, dtype=np.float32)[None, :], np.asarray([bias], dtype=np.float32))])
    return str(path)


# -- aesthetic_score ------------------------------------------------------------------------


def test_aesthetic_matches_in_memory_model_and_is_deterministic(tmp_path, encoder_file):
    weights, model = encoder_file
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=DIM), 0.25
    head = _linear_head(tmp_path, w, b)
    fn = build_reward("aesthetic_score", encoder=ENCODER, encoder_weights=weights, head_weights=head,
                      hidden_sizes=[], image_size=32, batch_size=2)
    imgs = _images()
    scores = fn(imgs)
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    assert fn(imgs) == scores  # same reward, same images
    again = build_reward("aesthetic_score", encoder=ENCODER, encoder_weights=weights, head_weights=head,
                         hidden_sizes=[], image_size=32)
    assert again(imgs) == pytest.approx(scores, abs=1e-6)  # another build, another batch size
    # independently: the in-memory model's features, normalised in numpy, dotted with the head
    cfg = model.pretrained_cfg
    x = preprocess(imgs, 32, cfg["mean"], cfg["std"], cfg["interpolation"])
    with torch.no_grad():
        emb = model(x).double().numpy()
    expected = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ w + b
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)
    # the `images` column wins over the completions
    assert fn(["ignored"] * 3, images=imgs) == scores
    # without encoder_weights: a fixed-seed random encoder, the same in every build, not the file's
    plain = [build_reward("aesthetic_score", encoder=ENCODER, head_weights=head, hidden_sizes=[], image_size=32)(imgs)
             for _ in range(2)]
    assert plain[0] == plain[1] and plain[0] != pytest.approx(scores, abs=1e-4)


def test_aesthetic_hand_set_linear_head_picks_one_dimension(tmp_path):
    k = 5
    head = _linear_head(tmp_path, np.eye(DIM)[k] * 2.0, -1.0)
    fn = build_reward("aesthetic_score", encoder=ENCODER, head_weights=head, hidden_sizes=[])
    emb = np.zeros((2, DIM))
    emb[0, k], emb[0, k + 1] = 3.0, 4.0  # norm 5: dim k is 0.6 after normalisation
    emb[1, k] = -7.0  # -> -1 after normalisation
    assert fn.score_embeddings(emb) == pytest.approx([2.0 * 0.6 - 1.0, 2.0 * -1.0 - 1.0], abs=1e-6)


def test_aesthetic_laion_key_format_with_hidden_layers(tmp_path):
    """LAION v2's nn.Sequential(Linear, Dropout, Linear, Dropout, Linear) state-dict keys."""
    rng = np.random.default_rng(2)
    sizes = [DIM, 8, 4, 1]
    mats = [(rng.normal(size=(o, i)), rng.normal(size=o)) for i, o in zip(sizes[:-1], sizes[1:])]
    state = {}
    for j, (w, b) in zip((0, 2, 4), mats):
        state[f"layers.{j}.weight"] = torch.tensor(w, dtype=torch.float32)
        state[f"layers.{j}.bias"] = torch.tensor(b, dtype=torch.float32)
    path = tmp_path / "laion.pth"
    torch.save(state, path)
    fn = build_reward("aesthetic_score", encoder=ENCODER, head_weights=str(path), hidden_sizes=[8, 4])
    emb = rng.normal(size=(3, DIM))
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for w, b in mats:  # LAION v2 has no nonlinearity between its layers
        x = x @ w.T + b
    assert fn.score_embeddings(emb) == pytest.approx(x[:, 0].tolist(), abs=1e-5)
    assert len(fn(_images(2))) == 2  # and the whole path runs
    with pytest.raises(ConfigError, match=r"hidden_sizes"):  # default LAION sizes do not fit this file
        build_reward("aesthetic_score", encoder=ENCODER, head_weights=str(path))


def test_aesthetic_config_errors(tmp_path):
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(ConfigError, match=r"head_weights: no file at .*nope\.safetensors"):
        build_reward("aesthetic_score", encoder=ENCODER, head_weights=missing)
    with pytest.raises(ConfigError, match="head_weights"):
        build_reward("aesthetic_score", encoder=ENCODER)  # required
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match=r"head_weights: could not load .*garbage\.pt"):
        build_reward("aesthetic_score", encoder=ENCODER, head_weights=str(garbage), hidden_sizes=[])
    head = _linear_head(tmp_path, np.ones(10), 0.0)
    with pytest.raises(ConfigError, match=r"encoder_weights: no file at .*missing\.pt"):
        build_reward("aesthetic_score", encoder=ENCODER, head_weights=head, hidden_sizes=[],
                     encoder_weights=str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="encoder must be"):
        build_reward("aesthetic_score", encoder="resnet18", head_weights=head, hidden_sizes=[])
    # a 10-dim head on a 96-dim encoder: found when the encoder loads, every call after too
    fn = build_reward("aesthetic_score", encoder=ENCODER, head_weights=head, hidden_sizes=[])
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"head_weights: .*head\.safetensors takes 10-dim embeddings "
                                              r"but encoder timm:test_resnet gives 96-dim"):
            fn(_images(1))
    bad = build_reward("aesthetic_score", encoder="timm:no_such_model", head_weights=head, hidden_sizes=[])
    with pytest.raises(ConfigError, match="no_such_model"):
        bad.load()
    # through the pipeline a load error is a per-sample failure, not a crash
    result = RewardPipeline([{"name": "aesthetic_score", "encoder": ENCODER, "head_weights": head,
                              "hidden_sizes": [], "failure_score": -1.0}])(_images(2))
    assert result.scores == [-1.0, -1.0] and result.failures == {"aesthetic_score": 2}


def test_aesthetic_encoder_weights_that_do_not_fit(tmp_path, encoder_file):
    weights, _ = encoder_file
    head = _linear_head(tmp_path, np.ones(64), 0.0)
    fn = build_reward("aesthetic_score", encoder="timm:test_vit", encoder_weights=weights, head_weights=head,
                      hidden_sizes=[])
    with pytest.raises(ConfigError, match=r"encoder_weights: .*encoder\.safetensors does not fit timm:test_vit"):
        fn.load()


def test_aesthetic_clip_encoder(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    model = CLIPVisionModelWithProjection(config).eval()
    model.save_pretrained(tmp_path / "clip")
    rng = np.random.default_rng(3)
    w = rng.normal(size=16)
    head = _linear_head(tmp_path, w, 0.5)
    fn = build_reward("aesthetic_score", encoder=f"clip:{tmp_path / 'clip'}", head_weights=head, hidden_sizes=[])
    imgs = _images(2)
    x = preprocess(imgs, 32, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    with torch.no_grad():
        emb = model(pixel_values=x).image_embeds.double().numpy()
    expected = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ w + 0.5
    assert fn(imgs) == pytest.approx(expected.tolist(), abs=1e-5)
    missing = build_reward("aesthetic_score", encoder=f"clip:{tmp_path / 'absent'}", head_weights=head, hidden_sizes=[])
    with pytest.raises(ConfigError, match=r"encoder: could not load 'clip:.*absent'"):
        missing.load()


# -- vlm_judge: parsing -------------------------------------------------------------------------

RUBRIC = ["Text Faithfulness", "Physical & Visual Quality", "Text Rendering"]


@pytest.mark.parametrize("text, expected", [
    ('The cat is there.\n{"Text Faithfulness": 4, "Physical & Visual Quality": 2, "Text Rendering": "N/A"}',
     [4.0, 2.0, None]),
    ("critique...\n**Text Faithfulness**: 3.5\n- Physical & Visual Quality: 2/4\nText rendering: N/A", [3.5, 2.0, None]),
    ("Text Faithfulness: 1 at first\n...final:\nText Faithfulness: 3\nphysical visual quality = 4\nTEXT RENDERING: 2",
     [3.0, 4.0, 2.0]),
    ('{"text_faithfulness": "3", "physical_&_visual_quality": 4.0, "text_rendering": null} trailing', [3.0, 4.0, None]),
])
def test_parse_scores(text, expected):
    assert list(parse_scores(text, RUBRIC).values()) == expected


@pytest.mark.parametrize("text", ["I like it.", '{"Text Faithfulness": 3}', "Text Faithfulness: N/A\n"
                                  "Physical & Visual Quality: N/A\nText Rendering: N/A", '{"Text Faithfulness": "good", '
                                  '"Physical & Visual Quality": 3, "Text Rendering": 2}'])
def test_parse_scores_rejects(text):
    with pytest.raises(ValueError):
        parse_scores(text, RUBRIC)


# -- vlm_judge: a real OpenAI-style server on loopback -----------------------------------------


class _Server:
    """POST /v1/chat/completions on 127.0.0.1. ``reply(prompt_text, image) -> (status, content)``
    decides each answer; every request's parsed body and decoded image are recorded."""

    def __init__(self, reply, delay=0.0):
        self.reply, self.delay, self.requests = reply, delay, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                from PIL import Image

                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]
                text = next(p["text"] for p in content if p["type"] == "text")
                url = next(p["image_url"]["url"] for p in content if p["type"] == "image_url")
                assert url.startswith("data:image/png;base64,")
                image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
                image.load()
                outer.requests.append({"body": body, "text": text, "image": image, "path": self.path,
                                       "auth": self.headers.get("Authorization")})
                if outer.delay:
                    time.sleep(outer.delay)
                status, answer = outer.reply(text, image)
                payload = json.dumps({"id": "x", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]}
                ) if status == 200 else json.dumps({"error": answer})
                data = payload.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _answer(scores):
    return "Critique: fine.\n" + json.dumps(dict(zip(RUBRIC, scores)))


def _judge(url, **kw):
    return build_reward("vlm_judge", model="judge-vl", base_url=url, **{"max_retries": 0, "timeout": 5, **kw})


def test_vlm_judge_request_and_scores(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    answers = {"a red cube": [4, 2, "N/A"], "7": [1, 4, 3], "a sign saying HI": [5, 0.5, 2.5]}
    with _Server(lambda text, image: (200, _answer(next(v for k, v in answers.items() if f'"{k}"' in text)))) as srv:
        fn = _judge(srv.url, api_key="sk-test", concurrency=3)
        imgs = [np.zeros((24, 40, 3), np.uint8), np.full((3, 16, 16), 0.5, np.float32), np.ones((20, 20, 3), np.uint8)]
        out = fn(imgs, prompt=["a red cube", 7, "a sign saying HI"])
    assert len(srv.requests) == 3
    for req in srv.requests:
        assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
        assert req["body"]["model"] == "judge-vl" and req["body"]["temperature"] == 0.1
        assert all(item in req["text"] for item in RUBRIC)
    by_prompt = {next(k for k in answers if f'"{k}"' in r["text"]): r["image"] for r in srv.requests}
    assert by_prompt["a red cube"].size == (40, 24) and by_prompt["7"].size == (16, 16)
    assert by_prompt["a sign saying HI"].size == (20, 20) and by_prompt["a red cube"].format == "PNG"
    # (4, 2 | N/A) -> mean 3 -> 2/3; (1, 4, 3) -> 8/3 -> 5/9; (5->4, 0.5->1, 2.5) -> 2.5 -> 1/2
    assert out["score"] == pytest.approx([2 / 3, 5 / 9, 0.5])
    assert out["text_faithfulness"] == pytest.approx([1.0, 0.0, 1.0])
    assert out["physical_visual_quality"] == pytest.approx([1 / 3, 1.0, 0.0])
    assert out["text_rendering"] == pytest.approx([2 / 3, 2 / 3, 0.5])  # N/A logs as the sample's score


def test_vlm_judge_http_error_is_one_failure_in_the_pipeline(caplog):
    def reply(text, image):
        return (500, "boom") if '"bad"' in text else (200, _answer([3, 3, "n/a"]))

    with _Server(reply) as srv:
        pipe = RewardPipeline([{"name": "vlm_judge", "model": "judge-vl", "base_url": srv.url, "max_retries": 1,
                                "timeout": 5, "failure_score": -1.0}])
        with caplog.at_level(logging.WARNING):
            result = pipe(_images(3), prompt=["good", "bad", "fine"])
    assert result.scores == pytest.approx([2 / 3, -1.0, 2 / 3])
    assert result.failures == {"vlm_judge": 1}
    assert result.components["vlm_judge/text_faithfulness"] == pytest.approx([2 / 3, -1.0, 2 / 3])
    assert sum('"bad"' in r["text"] for r in srv.requests) == 2  # 500 is retried once
    assert "HTTP 500" in caplog.text


def test_vlm_judge_timeout_fails_without_hanging():
    with _Server(lambda text, image: (200, _answer([4, 4, 4])), delay=2.0) as srv:
        pipe = RewardPipeline([{"name": "vlm_judge", "model": "judge-vl", "base_url": srv.url, "max_retries": 0,
                                "timeout": 0.3, "concurrency": 2}])
        start = time.monotonic()
        result = pipe(_images(2), prompt=["a", "b"])
        elapsed = time.monotonic() - start
    assert result.scores == [0.0, 0.0] and result.failures == {"vlm_judge": 2}
    assert elapsed < 1.5


def test_vlm_judge_connection_refused():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    pipe = RewardPipeline([{"name": "vlm_judge", "model": "m", "base_url": f"http://127.0.0.1:{port}/v1",
                            "max_retries": 0, "timeout": 2}])
    result = pipe(_images(3), prompt=["a", "b", "c"])
    assert result.scores == [0.0, 0.0, 0.0] and result.failures == {"vlm_judge": 3}


def test_vlm_judge_garbage_reply_fails_that_sample():
    def reply(text, image):
        return 200, ("I refuse to grade." if '"junk"' in text else _answer([2, 3, 4]))

    with _Server(reply) as srv:
        fn = _judge(srv.url)
        out = fn(_images(2), prompt=["junk", "ok"])
    assert math.isnan(out["score"][0]) and out["score"][1] == pytest.approx(2 / 3)


def test_vlm_judge_malformed_json_and_custom_template():
    class Raw(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            data = b'{"choices": []}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Raw)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        out = _judge(f"http://127.0.0.1:{httpd.server_address[1]}/v1")(_images(1), prompt=["x"])
        assert math.isnan(out["score"][0])
    finally:
        httpd.shutdown()
        httpd.server_close()
    fn = _judge("http://127.0.0.1:1/v1", rubric=["Quality"], score_range=[0, 10],
                prompt_template='Rate "{prompt}" on {rubric} from {min} to {max}. Reply {"Quality": n}.')
    assert fn.message(3) == 'Rate "3" on - Quality from 0 to 10. Reply {"Quality": n}.'


@pytest.mark.parametrize("options, match", [
    ({"base_url": "localhost:8000"}, "base_url"),
    ({"score_range": [4, 1]}, "score_range"),
    ({"rubric": []}, "rubric"),
    ({"timeout": 0}, "timeout"),
    ({"concurrency": 0}, "concurrency"),
    ({"bogus": 1}, "unknown option 'bogus'"),
])
def test_vlm_judge_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        build_reward("vlm_judge", model="m", **options)


def test_vlm_judge_deadline_holds_against_a_dripping_server():
    """A server that keeps sending a byte every 50 ms never trips a per-read socket timeout;
    the per-attempt deadline still ends the request."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.is_set():
            try:
                conn.sendall(b" ")
            except OSError:
                break
            time.sleep(0.05)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        fn = _judge(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", timeout=0.3)
        start = time.monotonic()
        out = fn(_images(1), prompt=["x"])
        assert math.isnan(out["score"][0]) and time.monotonic() - start < 1.0
    finally:
        stop.set()
        listener.close()
