"""End-to-end smoke: a write travels intake → Redis → handler → projections and back."""

from metawsm.forum.requests import AnswerRequest, OpenThreadRequest


def test_open_and_answer_round_trip(forum_daemon):
    forum = forum_daemon.forum
    opened = forum.submit_sync(OpenThreadRequest(ticket="T-1", title="Question", body="Need guidance", actor_type="agent"))
    assert opened.status == "applied"
    assert opened.thread.state == "new"
    answered = forum.submit_sync(AnswerRequest(body="Proceed", actor_type="operator"), thread_id=opened.thread_id)
    assert answered.thread.state == "answered"
    assert answered.thread.posts_count == 2


def test_serve_process_answers_health(serve_process):
    import json
    import urllib.request

    with urllib.request.urlopen(serve_process.url + "/api/v1/health") as response:
        body = json.loads(response.read())
    assert body["status"] in ("ok", "degraded")
