"""`eval run --server URL1,URL2`: the requests of one entry spread over several servers, with the results of one."""
from __future__ import annotations

import threading
import time
from http.server import ThreadingHTTPServer

import pytest

from eval.__main__ import main as cli
from eval.client import ChallengeAPI, ServerError, server_urls
from tests.helpers import GOOD, SCENARIOS, Handler, Server, completions, partial_entry, request

LIMIT = 3


def fake_server(delay: float) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = {"lock": threading.Lock(), "calls": [], "in_flight": 0, "max_in_flight": 0, "delay": delay,
                   "process": GOOD}
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def url(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture
def two_fakes():
    fakes = [fake_server(0.02), fake_server(0.02)]
    yield fakes
    for httpd in fakes:
        httpd.shutdown()


def test_requests_spread_over_servers_each_within_its_concurrency(two_fakes):
    a, b = two_fakes
    lm = ChallengeAPI(f"{url(a)},{url(b)}", concurrency=3, progress=False)
    out = lm.generate_until([request(f"p{i}", doc_id=i) for i in range(40)])
    assert out == [" C"] * 40
    sent = [[body["prompt"] for path, body in s.state["calls"] if path == "/process"] for s in (a, b)]
    assert len(sent[0]) + len(sent[1]) == 40 and sorted(sent[0] + sent[1]) == sorted(f"p{i}" for i in range(40))
    assert sent[0] and sent[1]  # both servers worked
    assert all(1 <= s.state["max_in_flight"] <= 3 for s in (a, b))
    assert lm.answered == {url(a): len(sent[0]), url(b): len(sent[1])}


def test_a_faster_server_takes_more_requests(two_fakes):
    fast, slow = two_fakes
    slow.state["delay"] = 0.2
    lm = ChallengeAPI(f"{url(fast)}|{url(slow)}", concurrency=2, progress=False)
    lm.generate_until([request(f"p{i}", doc_id=i) for i in range(30)])
    assert lm.answered[url(fast)] > 2 * lm.answered[url(slow)]


def test_a_failing_server_names_the_request_and_stops_the_rest(two_fakes):
    good, broken = two_fakes
    broken.state["process"] = {"text": None}
    lm = ChallengeAPI(f"{url(good)},{url(broken)}", concurrency=1, progress=False)
    started = time.monotonic()
    with pytest.raises(ServerError, match=rf"request \d+ \(task gsm8k_main, document \d+\): POST {url(broken)}/process"):
        lm.generate_until([request(f"p{i}", doc_id=i) for i in range(200)])
    assert time.monotonic() - started < 3  # it did not go on through the 200 requests on the good server
    assert len([c for c in good.state["calls"] if c[0] == "/process"]) < 200


@pytest.mark.parametrize(
    ("base_url", "message"),
    [("", "names no server"), (" , ", "names no server"), ("http://a:1,ftp://b", "'ftp://b' is not an http"),
     ("http://a:1,http://a:1", "twice")],
)
def test_bad_server_lists_are_refused_naming_the_url(base_url, message):
    with pytest.raises(ValueError, match=message):
        server_urls(base_url)


@pytest.fixture(scope="module")
def two_servers(default_server, tmp_path_factory):
    """The session's shared server and a second one like it (one torch thread each: they share the CPUs)."""
    second = Server(["-m", "submission", "--threads", "1"], {}, tmp_path_factory.mktemp("servers") / "second.log")
    try:
        second.wait_ready()
        yield [default_server.url, second.url]
    finally:
        second.stop()


def test_two_real_servers_give_the_results_of_one(two_servers, tmp_path):
    """The same entry served twice: the run over both records what the run over one records."""
    db = tmp_path / "results.sqlite"
    runs = {"one": two_servers[0], "both": ",".join(two_servers)}
    for name, servers in runs.items():
        assert cli(["run", "--server", servers, "--name", name, "--scenarios", SCENARIOS, "--limit", str(LIMIT),
                    "--db", str(db), "--out", str(tmp_path / name)]) == 0
    assert partial_entry(db, "both") == partial_entry(db, "one") and partial_entry(db, "one")
    for scenario in SCENARIOS.split(","):
        assert completions(tmp_path / "both", scenario) == completions(tmp_path / "one", scenario)
