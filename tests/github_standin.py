"""A local stand-in for the GitHub REST API, built from GitHub's own OpenAPI description.

Every request is routed by the operations in the description (`@octokit/openapi`, installed
by the test set-up) and its JSON body validated against the operation's request schema; every
answer is built from the operation's official example, filled with this stand-in's state,
and validated against the operation's response schema before it is sent. A request the real
API would not accept fails the test that made it (`violations`).

Faults can be injected: 5xx answers and secondary rate limits, before or after the request
takes effect (the latter is how a client posts a comment twice).
"""

from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

PREFIX = "/api/v3"  # served the way GitHub Enterprise Server serves it


def _nullable_to_jsonschema(node):
    """OpenAPI 3.0 `nullable: true` -> JSON Schema's null type, across the whole description."""
    if isinstance(node, list):
        return [_nullable_to_jsonschema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_jsonschema(v) for k, v in node.items() if k not in ("nullable", "example", "examples", "description")}
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


class Description:
    """GitHub's OpenAPI description: routes, schemas and examples."""

    def __init__(self, path: Path):
        raw = json.loads(path.read_text())
        self.raw = raw
        components = _nullable_to_jsonschema(raw["components"]["schemas"])
        self.registry = Registry().with_resource(
            "urn:github", Resource.from_contents({"components": {"schemas": components}}, default_specification=DRAFT202012)
        )
        self.routes = []
        for template, operations in raw["paths"].items():
            pattern = re.compile("^" + re.sub(r"\{[^}]+\}", r"([^/]+)", template) + "$")
            names = re.findall(r"\{([^}]+)\}", template)
            for method, operation in operations.items():
                if method in ("get", "post", "patch", "put", "delete"):
                    self.routes.append((method.upper(), pattern, names, template, operation))
        self.routes.sort(key=lambda r: (len(r[2]), r[3]))  # literal segments win over parameters

    def route(self, method: str, path: str):
        for m, pattern, names, template, operation in self.routes:
            match = pattern.match(path)
            if m == method and match:
                return template, dict(zip(names, match.groups())), operation
        return None

    def _schema(self, schema: dict) -> dict:
        text = json.dumps(_nullable_to_jsonschema(schema)).replace('"#/components/', '"urn:github#/components/')
        return json.loads(text)

    def validate(self, schema: dict, value) -> list[str]:
        validator = jsonschema.Draft202012Validator(self._schema(schema), registry=self.registry)
        return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}" for e in validator.iter_errors(value)]

    def example(self, operation: dict, status: str):
        content = operation["responses"][status].get("content", {}).get("application/json", {})
        for example in (content.get("examples") or {}).values():
            ref = example.get("$ref")
            value = self.raw["components"]["examples"][ref.rsplit("/", 1)[1]]["value"] if ref else example["value"]
            return copy.deepcopy(value)
        return None

    def _deref(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self.raw["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def complete(self, schema: dict, value, depth: int = 0):
        """Fill what an official example leaves out but the schema requires (some examples are
        older than their schema: the repository example has no `language`), the way the real API
        answers: null where the schema allows it, else an empty value of the right type."""
        schema = self._deref(schema)
        if depth > 12 or value is None:
            return value
        for key in ("allOf", "anyOf", "oneOf"):
            if key in schema and isinstance(value, dict):
                options = [self._deref(o) for o in schema[key]]
                objects = [o for o in options if o.get("type") == "object" or "properties" in o]
                for option in objects[:1] if key != "allOf" else objects:
                    value = self.complete(option, value, depth + 1)
                return value
        if isinstance(value, list) and "items" in schema:
            return [self.complete(schema["items"], item, depth + 1) for item in value]
        if isinstance(value, dict) and "properties" in schema:
            required = set(schema.get("required", []))
            for name, sub in schema["properties"].items():
                optional_object = self._deref(sub).get("type") == "object" and not self._deref(sub).get("nullable")
                if name not in value and (name in required or not optional_object):
                    value[name] = self._empty(sub)
            for name, sub in schema["properties"].items():
                if name in value:
                    value[name] = self.complete(sub, value[name], depth + 1)
        return value

    def _empty(self, schema: dict):
        schema = self._deref(schema)
        if schema.get("nullable") or not schema:
            return None
        if schema.get("enum"):
            return schema["enum"][0]
        return {"string": "", "integer": 0, "number": 0, "boolean": False, "array": []}.get(schema.get("type"), {})

    def response_schema(self, operation: dict, status: str):
        return operation["responses"][status].get("content", {}).get("application/json", {}).get("schema")


@dataclass
class Fault:
    method: str
    path: re.Pattern
    status: int
    after_effect: bool = False  # answer the error although the request took effect
    headers: dict = field(default_factory=dict)
    message: str = "Server Error"


def _full_media_type(payload):
    """`application/vnd.github.full+json`: every body also comes rendered, as HTML and as text."""
    items = payload if isinstance(payload, list) else [payload]
    for item in items:
        if isinstance(item, dict) and "body" in item:
            text = item["body"] or ""
            item.setdefault("body_text", text)
            item.setdefault("body_html", f"<p>{text}</p>" if text else "")
    return payload


BOT = "github-actions[bot]"  # who GITHUB_TOKEN acts as

class StandIn:
    """The API of one repository, in memory."""

    def __init__(self, description: Description, owner: str = "swisstwins", repo: str = "hpc-sites"):
        self.api = description
        self.owner, self.repo = owner, repo
        self.issues: dict[int, dict] = {}
        self.comments: dict[int, dict] = {}
        self.statuses: list[dict] = []
        self.requests: list[tuple[str, str, dict | None]] = []
        self.violations: list[str] = []
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        self._ids = 1000
        self.tokens: dict[str, str] = {}  # token -> login; any other token is the Actions bot's
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- test controls

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{PREFIX}"

    def start(self) -> "StandIn":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_pull_request(self, number: int, title: str, labels=(), head_sha: str = "0" * 40) -> None:
        self.issues[number] = {
            "number": number, "title": title, "body": "", "state": "open", "labels": list(labels),
            "pull_request": True, "head_sha": head_sha, "merged_at": None, "merge_commit_sha": None,
            "commits": [head_sha],
        }

    def merge_pull_request(self, number: int, merge_commit_sha: str) -> None:
        """GitHub's side of a merge: the pull request is closed, merged, and associated with the merge commit."""
        self.issues[number].update(
            state="closed", merged_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), merge_commit_sha=merge_commit_sha,
        )
        self.issues[number]["commits"].append(merge_commit_sha)

    def fail(self, method: str, path: str, status: int, after_effect: bool = False, headers=None, message: str = "Server Error") -> None:
        self.faults.append(Fault(method, re.compile(path), status, after_effect, headers or {}, message))

    def add_user(self, login: str) -> str:
        """Another GitHub user; returns a token that acts as them."""
        token = f"ghp_{login.replace('-', '_')}_token"
        self.tokens[token] = login
        return token

    def comment_as(self, login: str, number: int, body: str) -> int:
        """A comment written by another user, as if they had posted it on the web."""
        cid = self._next_id()
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.comments[cid] = {"id": cid, "issue": number, "body": body, "created_at": now, "updated_at": now, "user": login}
        return cid

    def comments_on(self, number: int) -> list[str]:
        return [c["body"] for c in sorted(self.comments.values(), key=lambda c: c["id"]) if c["issue"] == number]

    # -- the server

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload=None, headers=None):
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null") if length else None
                parsed = urlparse(self.path)
                with standin.lock:
                    status, payload, headers = standin.handle(method, parsed.path, parse_qs(parsed.query), body, self.headers)
                self._send(status, payload, headers)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_PATCH(self):
                self._serve("PATCH")

            def do_DELETE(self):
                self._serve("DELETE")

        return Handler

    def handle(self, method: str, path: str, query: dict, body, headers):
        self.requests.append((method, path, body))
        if not path.startswith(PREFIX):
            return self._violation(f"{method} {path}: outside {PREFIX}", 404)
        path = path[len(PREFIX):]
        token = (headers.get("Authorization") or "").split(" ")[-1]
        if not token:
            return 401, {"message": "Requires authentication"}, {}
        actor = self.tokens.get(token, BOT)
        found = self.api.route(method, path)
        if found is None:
            return self._violation(f"{method} {path}: no such operation in GitHub's API description", 404)
        template, params, operation = found
        request_body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        if request_body is not None:
            problems = self.api.validate(request_body, body)
            if problems:
                return self._violation(f"{method} {template}: request body invalid: {problems}", 422)
        fault = next((f for f in self.faults if f.method == method and f.path.search(path)), None)
        if fault is not None and not fault.after_effect:
            self.faults.remove(fault)
            return fault.status, {"message": fault.message}, fault.headers
        status, payload = self.operate(method, template, params, query, body, operation, actor)
        if fault is not None:
            self.faults.remove(fault)
            return fault.status, {"message": fault.message}, fault.headers
        schema = self.api.response_schema(operation, str(status)) if str(status) in operation["responses"] else None
        if "full+json" in (headers.get("Accept") or ""):
            payload = _full_media_type(payload)
        if schema is not None and payload is not None:
            payload = self.api.complete(schema, payload)
            problems = self.api.validate(schema, payload)
            if problems:
                self.violations.append(f"{method} {template}: the stand-in's own answer is invalid: {problems[:3]}")
        return status, payload, {}

    def _violation(self, text: str, status: int):
        self.violations.append(text)
        return status, {"message": text}, {}

    # -- operations, answered in the shapes of the official examples

    def _base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{PREFIX}/repos/{self.owner}/{self.repo}"

    def _repository(self, operation):
        repo = self.api.example(operation, "200")
        repo.update(name=self.repo, full_name=f"{self.owner}/{self.repo}", url=self._base())
        repo["owner"]["login"] = self.owner
        return repo

    def _comment(self, operation, status: str, comment: dict):
        out = self.api.example(operation, status)
        out.update(
            id=comment["id"],
            body=comment["body"],
            body_text=comment["body"],
            body_html=f"<p>{comment['body']}</p>",
            url=f"{self._base()}/issues/comments/{comment['id']}",
            issue_url=f"{self._base()}/issues/{comment['issue']}",
            html_url=f"https://github.example/{self.owner}/{self.repo}/pull/{comment['issue']}#issuecomment-{comment['id']}",
            created_at=comment["created_at"],
            updated_at=comment["updated_at"],
        )
        login = comment.get("user", BOT)
        out["user"] = dict(self._user(), login=login, type="Bot" if login.endswith("[bot]") else "User")
        return out

    def _user(self) -> dict:
        return copy.deepcopy(self.api.raw["components"]["examples"]["issue-comment"]["value"]["user"])

    def _issue(self, operation, status: str, issue: dict):
        out = self.api.example(operation, status)
        if not out.get("user"):  # the issue example leaves out its author; the API never does
            out["user"] = self._user()
        out.update(
            number=issue["number"], title=issue["title"], body=issue["body"], state=issue["state"],
            url=f"{self._base()}/issues/{issue['number']}",
            comments_url=f"{self._base()}/issues/{issue['number']}/comments",
            labels_url=f"{self._base()}/issues/{issue['number']}/labels{{/name}}",
            comments=sum(1 for c in self.comments.values() if c["issue"] == issue["number"]),
        )
        template_label = out["labels"][0] if out.get("labels") else {"id": 1, "node_id": "L", "url": "", "name": "", "description": None, "color": "ededed", "default": False}
        out["labels"] = [dict(template_label, name=name, url=f"{self._base()}/labels/{name}") for name in issue["labels"]]
        if not issue.get("pull_request"):
            out.pop("pull_request", None)
        return out

    def operate(self, method, template, params, query, body, operation, actor=None):
        actor = actor or BOT
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if (params.get("owner"), params.get("repo")) != (self.owner, self.repo) and "owner" in params:
            return 404, {"message": "Not Found"}
        if template == "/repos/{owner}/{repo}" and method == "GET":
            return 200, self._repository(operation)
        if template == "/repos/{owner}/{repo}/issues/{issue_number}" and method in ("GET", "PATCH"):
            issue = self.issues.get(int(params["issue_number"]))
            if issue is None:
                return 404, {"message": "Not Found"}
            if method == "PATCH":
                issue.update({k: v for k, v in body.items() if k in ("title", "body", "state")})
            return 200, self._issue(operation, "200", issue)
        if template == "/repos/{owner}/{repo}/pulls/{pull_number}" and method == "GET":
            issue = self.issues.get(int(params["pull_number"]))
            if issue is None or not issue.get("pull_request"):
                return 404, {"message": "Not Found"}
            pull = self.api.example(operation, "200")
            pull.update(number=issue["number"], title=issue["title"], state=issue["state"], url=f"{self._base()}/pulls/{issue['number']}")
            pull["head"]["sha"] = issue["head_sha"]
            return 200, pull
        if template == "/repos/{owner}/{repo}/commits/{ref}" and method == "GET":
            commit = self.api.example(operation, "200")
            commit.update(sha=params["ref"], url=f"{self._base()}/commits/{params['ref']}")
            return 200, commit
        if template == "/repos/{owner}/{repo}/commits/{commit_sha}/pulls" and method == "GET":
            sha = params["commit_sha"]
            found = [i for i in sorted(self.issues.values(), key=lambda i: i["number"]) if i.get("pull_request") and sha in i["commits"]]
            out = []
            for issue in found:
                pull = self._list_item(operation)["responses"]["200"]["content"]["application/json"]["examples"]["default"]["value"]
                pull = copy.deepcopy(pull)
                pull.update(
                    number=issue["number"], title=issue["title"], state=issue["state"], merged_at=issue["merged_at"],
                    merge_commit_sha=issue["merge_commit_sha"], url=f"{self._base()}/pulls/{issue['number']}",
                )
                pull["head"]["sha"] = issue["head_sha"]
                out.append(pull)
            return 200, out
        if template == "/repos/{owner}/{repo}/issues" and method == "GET":
            wanted = set(filter(None, (query.get("labels", [""])[0]).split(",")))
            state = query.get("state", ["open"])[0]
            found = [i for i in self.issues.values() if (state == "all" or i["state"] == state) and wanted <= set(i["labels"]) and not i.get("pull_request")]
            return 200, [self._issue(self._list_item(operation), "200", i) for i in found]
        if template == "/repos/{owner}/{repo}/issues" and method == "POST":
            number = max(self.issues, default=0) + 1
            self.issues[number] = {"number": number, "title": body["title"], "body": body.get("body") or "", "state": "open", "labels": list(body.get("labels") or [])}
            return 201, self._issue(operation, "201", self.issues[number])
        if template == "/repos/{owner}/{repo}/issues/{issue_number}/comments":
            number = int(params["issue_number"])
            if number not in self.issues:
                return 404, {"message": "Not Found"}
            if method == "POST":
                cid = self._next_id()
                self.comments[cid] = {"id": cid, "issue": number, "body": body["body"], "created_at": now, "updated_at": now, "user": actor}
                return 201, self._comment(operation, "201", self.comments[cid])
            found = [c for c in sorted(self.comments.values(), key=lambda c: c["id"]) if c["issue"] == number]
            page, per_page = int(query.get("page", ["1"])[0]), int(query.get("per_page", ["30"])[0])
            chunk = found[(page - 1) * per_page : page * per_page]
            return 200, [self._comment(self._list_item(operation), "200", c) for c in chunk]
        if template == "/repos/{owner}/{repo}/issues/comments/{comment_id}":
            comment = self.comments.get(int(params["comment_id"]))
            if comment is None:
                return 404, {"message": "Not Found"}
            if method in ("DELETE", "PATCH") and comment["user"] != actor:
                return 403, {"message": "Resource not accessible by integration"}  # only its author edits a comment here
            if method == "DELETE":
                del self.comments[comment["id"]]
                return 204, None
            if method == "PATCH":
                comment.update(body=body["body"], updated_at=now)
            return 200, self._comment(operation, "200", comment)
        if template == "/repos/{owner}/{repo}/issues/{issue_number}/labels" and method == "GET":
            issue = self.issues[int(params["issue_number"])]
            example = self.api.example(operation, "200")[0]
            return 200, [dict(example, name=name) for name in issue["labels"]]
        if template == "/repos/{owner}/{repo}/statuses/{sha}" and method == "POST":
            status = dict(self.api.example(operation, "201"), state=body["state"], context=body.get("context", "default"), description=body.get("description"), target_url=body.get("target_url"))
            self.statuses.append({"sha": params["sha"], **status})
            return 201, status
        return self._violation(f"{method} {template}: not implemented by the stand-in", 501)[:2]

    def _list_item(self, operation):
        """A list operation's example is a list: answer items in the shape of its first element."""
        example = self.api.example(operation, "200")
        wrapped = copy.deepcopy(operation)
        wrapped["responses"]["200"]["content"]["application/json"]["examples"] = {"default": {"value": example[0]}}
        return wrapped
