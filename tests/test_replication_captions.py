"""Caption generality, generalization (WordNet and an LLM endpoint on 127.0.0.1), dual fusion."""

import json
import statistics
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from trustlab.errors import ConfigError, DataError
from trustlab.replication.captions import generality, generalize, generalize_wordnet, read_captions
from trustlab.replication.config import DualFusion
from trustlab.replication.fusion import aux_pool, class_phrase, fuse_captions, fuse_images, fuse_states
from trustlab.replication.llm import ChatClient, llm_generalize, llm_score
from trustlab.replication.text import make_encoder


class ChatServer:
    """A chat-completions endpoint on 127.0.0.1 answering with ``reply(prompt)`` (None: HTTP 500)."""

    def __init__(self, reply):
        self.prompts = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/chat/completions" and body["model"] == "test-model"
                prompt = body["messages"][-1]["content"]
                server.prompts.append(prompt)
                answer = reply(prompt)
                if answer is None:
                    self.send_response(500)
                    self.end_headers()
                    return
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def llm_cache(tmp_path, monkeypatch):
    monkeypatch.setattr("trustlab.replication.llm.data_root", lambda: tmp_path)
    return tmp_path / "cache" / "llm"


def caption_of(prompt: str) -> str:
    return prompt.rsplit("Caption: ", 1)[1]


def test_generality_terms_follow_their_definitions():
    specific = generality("Barack Obama with 3 flags in Paris in 2008")
    plain = generality("a person with flags in a city")
    assert specific.specificity < plain.specificity  # named entities and numerals count against it
    assert generality("an animal").broadness > generality("a poodle").broadness
    assert generality("an animal").abstraction > generality("a poodle").abstraction
    assert generality("a dog runs").tense == 10 and generality("a dog running").tense == 0
    for g in (specific, plain):
        assert 0 <= g.score <= 10
        assert g.score == pytest.approx((g.specificity + g.broadness + g.tense + g.abstraction) / 4)


def test_wordnet_generalization_raises_the_score_of_the_emoji_captions():
    from trustlab.data import load_dataset

    captions = sorted(set(load_dataset("emoji", "all", size=8).captions))
    general, failures = generalize(captions, "wordnet")
    assert not failures and all(1 <= len(g.split()) <= 5 for g in general)
    before = statistics.fmean(generality(c).score for c in captions)
    after = statistics.fmean(generality(g).score for g in general)
    assert after > before + 0.5, (before, after)
    assert len(set(general)) < len(set(captions)) / 3  # many specific captions share one general one
    assert generalize_wordnet("brazil flag") == generalize_wordnet("japan flag")


def test_llm_generalization_caches_and_falls_back_per_caption(llm_cache):
    answers = {"brazil flag": "A flag.", "woman juggling": "Sure! Here is a much more general caption for you",
               "tulip": None}
    server = ChatServer(lambda p: answers[caption_of(p)])
    try:
        client = ChatClient(server.url, "test-model", retries=1, timeout=5)
        out, failures = llm_generalize(list(answers), client, generalize_wordnet)
        assert out[0] == "A flag"  # quotes and the final full stop are stripped
        assert out[1] == generalize_wordnet("woman juggling") and out[2] == generalize_wordnet("tulip")
        assert len(failures) == 2 and "not a caption" in failures[0] and "2 attempts" in failures[1]
        asked = len(server.prompts)
        assert asked == 1 + 1 + 2  # one retry for the HTTP 500
        answers["tulip"] = "a plant"
        out, failures = llm_generalize(list(answers), client, generalize_wordnet)
        assert out[2] == "a plant" and len(server.prompts) == asked + 2  # "brazil flag" came from the cache
        assert len((llm_cache).glob("generalize-*.jsonl").__next__().read_text().splitlines()) == 2
    finally:
        server.close()


def test_llm_score_averages_six_criteria_and_falls_back(llm_cache):
    server = ChatServer(lambda p: "7, 8, 6, 9, 5, 10" if "flag" in caption_of(p) else "very general!")
    try:
        scores, failures = llm_score(["brazil flag", "tulip"], ChatClient(server.url, "test-model"),
                                    lambda c: generality(c).score)
        assert scores[0] == pytest.approx(7.5)
        assert scores[1] == pytest.approx(generality("tulip").score) and len(failures) == 1
    finally:
        server.close()


def test_unreachable_endpoint_stops_asking_and_falls_back(llm_cache):
    client = ChatClient("http://127.0.0.1:9/v1", "m", retries=0, timeout=2)
    out, failures = llm_generalize([f"red flag {i}" for i in range(6)], client, generalize_wordnet)
    assert out == [generalize_wordnet(f"red flag {i}") for i in range(6)]
    assert sum("not asked" in f for f in failures) == 3


def test_bad_captions_files_and_endpoints(tmp_path):
    (tmp_path / "empty.txt").write_text("a cat\n\na dog\n")
    with pytest.raises(DataError, match="empty.txt:2 is empty"):
        read_captions(tmp_path / "empty.txt")
    (tmp_path / "bytes.txt").write_bytes(b"a cat\ncaf\xe9\n")
    with pytest.raises(DataError, match="bytes.txt:2 is not valid UTF-8"):
        read_captions(tmp_path / "bytes.txt")
    (tmp_path / "c.jsonl").write_text('{"file": "a.png", "caption": "a cat"}\n{"file": "b.png"}\n')
    with pytest.raises(DataError, match="c.jsonl:2 needs"):
        read_captions(tmp_path / "c.jsonl")
    with pytest.raises(ConfigError, match="http"):
        ChatClient("localhost:8000", "m")


def test_cli_score_and_generalize(cli, tmp_path):
    src = tmp_path / "captions.jsonl"
    src.write_text('{"file": "a.png", "caption": "brazil flag"}\n{"file": "b.png", "caption": "3 red apples"}\n')
    r = cli("replication", "captions", "generalize", str(src), "--out", str(tmp_path / "gen.jsonl"), "--quiet")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert [row["original_caption"] for row in rows] == ["brazil flag", "3 red apples"] and rows[0]["file"] == "a.png"
    r = cli("replication", "captions", "score", str(tmp_path / "gen.jsonl"), "--plot", str(tmp_path / "s.png"))
    assert r.returncode == 0 and "heuristic: mean" in r.stdout and (tmp_path / "s.png").stat().st_size > 0
    r = cli("replication", "captions", "generalize", str(src), "--out", str(tmp_path / "x.txt"), "--method", "llm",
            "--llm-url", "http://127.0.0.1:9/v1", "--model", f"none-{uuid.uuid4().hex}", "--quiet")
    assert r.returncode == 0 and "fell back to WordNet" in r.stdout
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\n")
    r = cli("replication", "captions", "score", str(tmp_path / "bad.txt"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_dual_fusion_mixes_images_and_text_states():
    fusion = DualFusion(image_weight=0.1, text_weight=0.5)
    x0 = torch.ones(4, 3, 8, 8)
    pool = -torch.ones(2, 3, 8, 8)
    mixed = fuse_images(fusion, x0, pool, torch.Generator().manual_seed(0))
    assert torch.allclose(mixed, torch.full_like(x0, 0.8))
    enc = make_encoder("hash")
    captions, classes = ["a red flag", ""], ["Flags", "Flags"]
    states, mask = enc.encode(captions)
    fused, fmask = fuse_states(fusion, states, mask, captions, classes, enc)
    cls_states, _ = enc.encode([class_phrase("Flags")])
    assert torch.allclose(fused[0], 0.5 * states[0] + 0.5 * cls_states[0])
    assert torch.equal(fused[1], states[1]) and torch.equal(fmask[1], mask[1])  # empty captions stay empty
    assert fuse_captions(DualFusion(text_weight=0.5, text_mode="append"), captions, classes) == ["a red flag with flags", ""]
    assert aux_pool(fusion, 8).shape == (1024, 3, 8, 8)
    with pytest.raises(ConfigError):
        DualFusion(image_weight=1.5).validate()


def test_training_with_generalized_captions_and_dual_fusion(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("replication", "train", "--out", str(out), "--n", "8", "--size", "8", "--encoder", "hash",
            "--channels", "8,16,16", "--steps", "3", "--batch-size", "4", "--generalize", "wordnet", "--dual-fusion",
            "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fusion"]["image_weight"] == 0.1 and summary["fusion"]["text_weight"] == 0.5
    assert "generalized (wordnet)" in summary["data"]
    r = cli("replication", "sample", str(out), "--n", "4", "--steps", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    from trustlab.replication.sampling import load_samples

    _, meta = load_samples(r.stdout.strip())
    assert all(len(p.split()) <= 5 for p in meta["prompts"])
    r = cli("replication", "train", "--out", str(tmp_path / "bad"), "--fusion-aux", "nope", "--fusion-image", "0.1")
    assert r.returncode == 2 and "nope" in r.stderr
