"""The HTTP job API as a real server process, talking HTTP on loopback to real workers."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from ops.dicom import read_series
from ops.samples import ct_phantom, ct_series
from ops.volume import read_volume, write_volume
from carina.local import free_port, start_api, stop_process_group

TOKEN = "s3cret-token"
GEOMETRY = {"spacing": [1.0, 1.0, 2.0], "origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data-root")
    (root / "study").mkdir()
    ct_series(root / "dicom-study", ct_phantom((6, 16, 16)))
    write_volume(np.arange(6 * 8 * 10, dtype=np.int16).reshape(6, 8, 10), GEOMETRY, root / "study" / "ct.mhd")
    (root / "truncated").mkdir()
    write_volume(np.zeros((6, 8, 10), np.int16), GEOMETRY, root / "truncated" / "ct.mhd")
    (root / "truncated" / "ct.raw").write_bytes(b"\0" * 10)
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.mhd").write_text("not yours")
    (root / "escape").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def api(deployment, data_root, tmp_path_factory):
    port = free_port()
    env = {**deployment.env, "CARINA_DATA_ROOT": str(data_root), "CARINA_API_TOKEN": TOKEN,
           "CARINA_API_MAX_BODY_BYTES": "4096"}
    proc = start_api(env, port, tmp_path_factory.mktemp("api") / "api.log")
    yield f"http://127.0.0.1:{port}"
    stop_process_group(proc)


def call(url, method="GET", body=None, token=TOKEN, content_type="application/json", raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def follow(api, uid, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        status, body = call(f"{api}/query/{uid}")
        seen.append(status)
        if status != 202:
            return status, body, seen
        time.sleep(0.1)
    raise AssertionError(f"job {uid} still running: {seen[-5:]}")


def test_seed_contract_submit_then_query_until_done(api, data_root):
    status, body = call(f"{api}/job/", "POST", {"job_name": "fastio-itk", "in_dir": "study", "crop_size": [4, 4, 2]})
    assert status == 201 and set(body) == {"uid"}
    first, _ = call(f"{api}/query/{body['uid']}")
    assert first in (200, 202)
    status, done, _ = follow(api, body["uid"])
    assert status == 200 and done["msg"] == "Job has completed"
    assert done["output_dir"] == f"results/{body['uid']}"
    assert read_volume(data_root / done["output_dir"] / "output.mhd")[0].shape == (2, 4, 4)


def test_3dblur_through_the_api(api, data_root):
    status, body = call(f"{api}/job/", "POST", {"job_name": "3dblur", "in_dir": "dicom-study", "sigma_mm": 2.0})
    assert status == 201
    status, done, _ = follow(api, body["uid"])
    assert status == 200, done
    assert read_series(data_root / done["output_dir"]).volume.shape == (6, 16, 16)
    status, reply = call(f"{api}/job/", "POST", {"job_name": "3dblur", "in_dir": "dicom-study", "sigma_mm": -1})
    assert status == 400 and "sigma_mm" in reply["error"]


def test_a_job_not_finished_answers_202_with_the_seed_message(api, deployment):
    # No worker takes from the shared io queue for a while: the job is certainly not finished.
    control = deployment.app.control
    assert len(control.cancel_consumer("io", reply=True, timeout=10)) == len(deployment.logs)
    try:
        _, body = call(f"{api}/job/", "POST", {"job_name": "fastio-itk", "in_dir": "study"})
        status, reply = call(f"{api}/query/{body['uid']}")
        assert status == 202 and reply["msg"] == "Job is running" and reply["state"] == "queued"
    finally:
        control.add_consumer("io", reply=True, timeout=10)
    status, _, _ = follow(api, body["uid"])
    assert status == 200


def test_delete_cancels_a_job_and_query_then_answers_410(api, deployment):
    control = deployment.app.control
    assert len(control.cancel_consumer("io", reply=True, timeout=10)) == len(deployment.logs)
    try:
        _, body = call(f"{api}/job/", "POST", {"job_name": "fastio-itk", "in_dir": "study"})
        status, reply = call(f"{api}/job/{body['uid']}", "DELETE")
        assert status == 202 and reply["msg"] == "Job is being cancelled"
    finally:
        control.add_consumer("io", reply=True, timeout=10)
    status, reply, _ = follow(api, body["uid"])
    assert status == 410 and reply["msg"] == "Job was cancelled" and "by the HTTP API" in reply["error"]
    assert call(f"{api}/job/{body['uid']}", "DELETE")[0] == 200  # already cancelled
    assert call(f"{api}/job/no-such-job", "DELETE")[0] == 404
    _, done = call(f"{api}/job/", "POST", {"job_name": "fastio-itk", "in_dir": "study"})
    assert follow(api, done["uid"])[0] == 200
    status, reply = call(f"{api}/job/{done['uid']}", "DELETE")
    assert status == 409 and reply["state"] == "done"
    assert call(f"{api}/job/{done['uid']}", "DELETE", token="wrong")[0] == 401


def test_failed_job_is_a_500_with_the_reason(api):
    _, body = call(f"{api}/job/", "POST", {"job_name": "fastio-itk", "in_dir": "truncated"})
    status, reply, _ = follow(api, body["uid"])
    assert status == 500 and reply["msg"] == "Job has failed"
    assert "is truncated" in reply["error"] and reply["stage"].endswith("read_volume")


def test_unknown_uid_is_404(api):
    assert call(f"{api}/query/nope")[0] == 404


@pytest.mark.parametrize("body, raw, content_type, code, message", [
    (None, b"{not json", "application/json", 400, "malformed JSON"),
    (None, b"[1, 2]", "application/json", 400, "JSON object"),
    ({"job_name": "no-such", "in_dir": "study"}, None, "application/json", 400, "unknown pipeline"),
    ({"in_dir": "study"}, None, "application/json", 400, "job_name is required"),
    ({"job_name": "fastio-itk"}, None, "application/json", 400, "in_dir must be"),
    ({"job_name": "fastio-itk", "in_dir": "study", "crop_size": "big"}, None, "application/json", 400, "three integers"),
    ({"job_name": "fastio-itk", "in_dir": "study", "crop_start": [50, 0, 0]}, None, "application/json", 400,
     "ct.mhd: CROP_START_X=50 is outside the image (size 10 along X)"),
    ({"job_name": "fastio-itk", "in_dir": "study"}, None, "text/plain", 415, "application/json"),
    ({"job_name": "fastio-itk", "in_dir": "/etc"}, None, "application/json", 403, "outside the data root"),
    ({"job_name": "fastio-itk", "in_dir": "study/../../etc"}, None, "application/json", 403, "'..'"),
    ({"job_name": "fastio-itk", "in_dir": "escape/secret.mhd"}, None, "application/json", 403, "outside the data root"),
], ids=["malformed", "not-object", "unknown-pipeline", "no-job-name", "no-in-dir", "bad-param", "crop-outside",
        "content-type",
        "absolute-outside", "dot-dot", "symlink-escape"])
def test_bad_requests_are_refused_with_a_reason(api, body, raw, content_type, code, message):
    status, reply = call(f"{api}/job/", "POST", body, raw=raw, content_type=content_type)
    assert status == code and message in reply["error"]


def test_huge_body_is_413(api):
    raw = json.dumps({"job_name": "fastio-itk", "in_dir": "study", "pad": "x" * 10_000}).encode()
    assert call(f"{api}/job/", "POST", raw=raw)[0] == 413


@pytest.mark.parametrize("token", [None, "wrong"])
def test_token_is_required(api, token):
    status, reply = call(f"{api}/job/", "POST", {"job_name": "fastio-itk", "in_dir": "study"}, token=token)
    assert status == 401 and "bearer token" in reply["error"]
    assert call(f"{api}/query/anything", token=token)[0] == 401


def test_openapi_document_is_public(api):
    status, doc = call(f"{api}/openapi.json", token=None)
    assert status == 200 and {"/job/", "/query/{uid}"} <= set(doc["paths"])


def fuzz_cases(count: int, seed: int) -> list[tuple[str, str, dict[str, str], bytes]]:
    """Malformed requests, generated: (method, path, headers, body). None is a valid job: an
    ``in_dir`` is never one that exists."""
    import random

    rng = random.Random(seed)
    atoms = [0, -1, 10**5000 // 10**4990, 1.5, True, None, "", "study", "é" * 3, "\u0000", [], {}, "x" * 300,
             float("inf")]
    in_dirs = ["nope", "/etc", "study/../..", "", 5, [], {"a": 1}, "study\u0000", "escape/secret.mhd", "é/ü"]

    def value(depth: int):
        kind = rng.random()
        if depth > 3 or kind < 0.5:
            return rng.choice(atoms)
        if kind < 0.75:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(["job_name", "in_dir", "priority", "crop_size", "overlap", "x"]): value(depth + 1)
                for _ in range(rng.randint(0, 3))}

    def json_body() -> bytes:
        body = {"job_name": rng.choice(["fastio-itk", "3dblur", "spleen-seg", 7, None, "nope"]),
                "in_dir": rng.choice(in_dirs)}
        for key in rng.sample(["priority", "config_dir", "crop_size", "crop_start", "overlap", "sigma", "x"], 2):
            body[key] = value(0)
        return json.dumps(body, default=str).replace("Infinity", rng.choice(["Infinity", "NaN", "1e999"])).encode()

    raw_bodies = [b"[" * 30_000 + b"]" * 30_000, b'{"job_name": ' + b"9" * 5000 + b"}", b"\xff\xfe{}",
                  b'{"job_name": "fastio-itk", "priority": []}', b"{" * 5, b"", b"null", b'"text"',
                  '{"in_dir": "é"}'.encode("utf-16")]
    cases = []
    for n in range(count):
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        roll = rng.random()
        if roll < 0.15:
            headers["Authorization"] = rng.choice(["Bearer éé", "bearer", "Basic eDp5", "", "Bearer " + "a" * 5000,
                                                    f"Bearer  {TOKEN}x", "Bearer\t"])
        elif roll < 0.25:
            headers["Content-Type"] = rng.choice(["application/json; charset=bogus-xx", "application/json; charset=",
                                                  "text/json", "application/json; charset=utf-16", "*/*"])
        method, path = "POST", "/job/"
        if rng.random() < 0.2:
            method = rng.choice(["GET", "PUT", "DELETE", "PATCH", "POST"])
            path = rng.choice(["/job/", "/query/", "/query/%00", "/query/..%2f..%2fetc", "/job/" + "z" * 3000,
                               "/nope", "/query/%C3%A9", "/job/%ff"])
        body = rng.choice(raw_bodies) if rng.random() < 0.25 else json_body()
        cases.append((method, path, headers, body))
    return cases


def test_a_fuzz_of_malformed_requests_is_answered_4xx_in_json_and_the_server_stays_up(api):
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(api)
    answers = []
    for method, path, headers, body in fuzz_cases(240, seed=5):
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, text in headers.items():
                connection.putheader(name, text.encode("utf-8"))
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            reply = response.read()
        finally:
            connection.close()
        answers.append((response.status, method, path, headers, body[:80]))
        assert 400 <= response.status < 500, answers[-1]
        assert isinstance(json.loads(reply), dict), answers[-1]
    print(f"\nAPI fuzz: {len(answers)} malformed requests, {sum(a[0] >= 500 for a in answers)} answered 5xx")
    assert call(f"{api}/openapi.json", token=None)[0] == 200


def test_the_second_model_runs_through_the_api_like_the_seed_pipelines(api, data_root):
    from ops.samples import abdomen_phantom

    ct, _ = abdomen_phantom((24, 96, 96), (2.5, 2.5, 3.0), seed=900_031)
    write_volume(ct, {**GEOMETRY, "spacing": [2.5, 2.5, 3.0]}, data_root / "abdomen" / "ct.nii.gz")
    status, body = call(f"{api}/job/", "POST", {"job_name": "abdomen-seg", "in_dir": "abdomen"})
    assert status == 201
    status, done, _ = follow(api, body["uid"], timeout_s=180)
    assert status == 200, done
    labels, _ = read_volume(data_root / done["output_dir"] / "ct.mhd")
    assert labels.shape == ct.shape and set(np.unique(labels)) <= {0, 1, 2, 3}


def test_the_pipelines_are_served_with_their_definitions_and_sources(api):
    status, pipelines = call(f"{api}/pipelines")
    assert status == 200 and {"3dblur", "fastio-itk", "nuclei-seg", "spleen-seg"} <= {p["name"] for p in pipelines}
    spleen = next(p for p in pipelines if p["name"] == "spleen-seg")
    assert spleen["source"] == "carina" and spleen["parameters"]["overlap"]["maximum"] == 0.9
    assert [s["queue"] for s in spleen["stages"]] == ["io", "gpu", "io"]
    assert call(f"{api}/pipelines", token="wrong")[0] == 401
