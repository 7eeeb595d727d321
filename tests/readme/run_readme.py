#!/usr/bin/env python3
"""Runs README.md's own commands against a stack that scripts/dev starts, so the front door
cannot drift from the house: the "Try it" GraphQL operations and curl lines, the shell lines
of "One review's journey", and the ops walkthrough "Break a job on purpose, and repair it".

The stack is a private one (its own .dev folder, database, Redis prefix and ports), so a
developer's running `scripts/dev` is left alone. The commands run as written, but for these
rewrites, which only point them at that stack:
  - `.dev/` becomes the private dev folder;
  - `127.0.0.1:3000` and `localhost:9101` become the private API and metrics addresses;
  - `{reviews}` (the Redis key prefix) becomes the private prefix;
  - `<token>`, `<review id>` and `"…"` placeholders get a real token, review or product;
  - "in GraphiQL" steps are done with curl, and `--watch` runs for two seconds;
  - a step whose effect comes later (a job failing into a dead letter) is retried for a
    few seconds until its output shows it.
Usage: tests/readme/run_readme.py   (exits non-zero, saying which line failed)
"""
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sections(readme):
    """Heading -> list of (language, block text)."""
    found, heading, block, lang = {}, None, None, None
    for line in readme.splitlines():
        if block is None and line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif block is None and line.strip().startswith("```"):
            lang, block = line.strip()[3:], []
        elif block is not None and line.strip().startswith("```"):
            found.setdefault(heading, []).append((lang, textwrap_dedent(block)))
            block = None
        elif block is not None:
            block.append(line)
    return found


def textwrap_dedent(lines):
    indent = min((len(l) - len(l.lstrip()) for l in lines if l.strip()), default=0)
    return "\n".join(l[indent:] for l in lines)


def shell_lines(block):
    """A shell block's commands: comments dropped, continued lines joined."""
    commands, current = [], ""
    for line in block.splitlines():
        line = re.sub(r"\s+#\s.*$", "", line) if not line.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        commands.append(current + line)
        current = ""
    return commands


class Stack:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="readme-")
        self.dev = os.path.join(self.tmp, "dev")
        self.api = f"127.0.0.1:{free_port()}"
        self.metrics = f"127.0.0.1:{free_port()}"
        tag = "%08x" % random.getrandbits(32)
        self.db_name = f"reviews_readme_{tag}"
        self.prefix = f"readme-{tag}"
        self.env = dict(os.environ, DEV_DIR=self.dev, API_ADDR=self.api,
                        WORKER_METRICS_ADDR=self.metrics, DB_NAME=self.db_name,
                        REDIS_PREFIX=self.prefix, RUST_LOG="warn")
        if "DATABASE_URL" in self.env:
            self.env["DATABASE_URL"] = self.env["DATABASE_URL"].rsplit("/", 1)[0] + "/" + self.db_name

    def rewrite(self, command):
        command = command.replace(".dev/", self.dev + "/")
        command = command.replace("127.0.0.1:3000", self.api).replace("localhost:3000", self.api)
        command = command.replace("localhost:9101", self.metrics)
        return command.replace("{reviews}", "{" + self.prefix + "}")

    def sh(self, command, check=True):
        """Runs a command in a new shell that sourced the stack's .dev/env, from the repo."""
        script = f"source {self.dev}/env\n{command}" if os.path.exists(f"{self.dev}/env") else command
        done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=600)
        if check and done.returncode != 0:
            fail(f"`{command}` exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done.stdout

    def graphql(self, query, token=None, variables=None):
        request = urllib.request.Request(
            f"http://{self.api}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"content-type": "application/json",
                     **({"authorization": f"Bearer {token}"} if token else {})})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def token(self, sub):
        return self.sh(f"target/debug/reviews-api token --sub {sub}").strip()

    def down(self):
        subprocess.run(["bash", "-c", "scripts/dev down"], cwd=ROOT, env=self.env,
                       capture_output=True, timeout=120)
        admin = self.env.get("DATABASE_URL", "").rsplit("/", 1)[0] + "/postgres" \
            if "DATABASE_URL" in self.env else None
        drop = ["psql", "--no-psqlrc", "-q", "-c", f"drop database if exists {self.db_name} with (force)"]
        subprocess.run(drop + ([admin] if admin else ["-h", os.environ.get("DB_HOST", "127.0.0.1"),
                       "-p", os.environ.get("DB_PORT", "5432"), "-U", os.environ.get("DB_USER", "postgres"),
                       "postgres"]), capture_output=True)
        subprocess.run(["bash", "-c", f"redis-cli {redis_target()} --scan --pattern '{{{self.prefix}}}:*' "
                        f"| xargs -r redis-cli {redis_target()} del"], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def redis_target():
    url = os.environ.get("REDIS_URL")
    return f"-u {url}" if url else f"-h {os.environ.get('REDIS_HOST', '127.0.0.1')} -p {os.environ.get('REDIS_PORT', '6379')}"


def fail(message):
    print(f"README: {message}", file=sys.stderr)
    raise SystemExit(1)


def until(what, probe, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if probe():
            return
        time.sleep(0.3)
    fail(f"{what} did not happen within {seconds} s")


def no_errors(response, what):
    if response.get("errors"):
        fail(f"{what} answered errors: {json.dumps(response['errors'])}")
    return response["data"]


def try_it(stack, blocks):
    """The GraphQL operations of "Try it" (as GraphiQL sends them), then its curl lines."""
    token = stack.token("readme-user")
    review_id = None
    for lang, block in blocks:
        if lang != "graphql":
            continue
        operations = [block] if block.lstrip().startswith(("{", "mutation {\n")) else \
            [line for line in block.splitlines() if line.strip()]
        for operation in operations:
            if "<review id>" in operation:
                operation = operation.replace("<review id>", review_id)
            data = no_errors(stack.graphql(operation, token), operation.strip()[:60])
            if "addReview" in data:
                review_id = data["addReview"]["id"]
    for lang, block in blocks:
        if lang == "sh":
            output = stack.sh("\n".join(stack.rewrite(c) for c in shell_lines(block)))
            if '"errors"' in output or '"data"' not in output:
                fail(f"the curl example answered: {output}")


def journey(stack, blocks):
    """The journey's shell lines, after a review was added (so each shows something)."""
    token = stack.token("readme-journey")
    product = "00000000-0000-4000-8000-000000000002"
    no_errors(stack.graphql(
        'mutation($p: ID!) { addReview(input: {productId: $p, rating: 4, title: "t", body: "b"}) { id } }',
        token, {"p": product}), "addReview")
    for lang, block in blocks:
        if lang == "sh":
            for command in shell_lines(block):
                if not stack.sh(stack.rewrite(command)).strip():
                    fail(f"`{command}` printed nothing")
        if lang == "graphql":
            owner = stack.token("demo-owner")
            for line in block.splitlines():
                operation = re.sub(r"\s+#.*$", "", line).replace('"…"', f'"{product}"')
                if operation.strip():
                    no_errors(stack.graphql(operation, owner), operation.strip()[:60])


def walkthrough(stack, blocks):
    """Break a job on purpose, and repair it: the block's lines in order."""
    token = stack.token("readme-breaker")
    commands = [c for lang, block in blocks if lang == "sh" for c in shell_lines(block)]
    for command in commands:
        command = stack.rewrite(command)
        if command.startswith("scripts/dev"):
            continue  # the stack is up already, and .dev/env is sourced for every line
        if "--watch" in command:
            stack.sh(f"timeout 2 {command} >/dev/null; true")
            continue
        if command.startswith("scripts/dead-jobs list"):
            # Its job has to fail twice (1 s apart) before the letter shows.
            until("the broken job's dead letter", lambda: "notify_owner" in stack.sh(command))
            continue
        if command.startswith("curl -s") and "metrics" in command:
            until("the dead letter's metrics", lambda: "dead_letters_total" in stack.sh(command, check=False))
            continue
        stack.sh(command)
        if "rename to notifications_broken" in command:
            # "add a review in GraphiQL": the same operation, with curl's help.
            no_errors(stack.graphql(
                'mutation { addReview(input: {productId: "00000000-0000-4000-8000-000000000003", '
                'rating: 2, title: "Slippery", body: "Not on ice."}) { id } }', token), "addReview")
        if command.startswith("scripts/dead-jobs replay"):
            until("the owner's notification after the replay", lambda: stack.sh(
                "psql \"$DATABASE_URL\" -Atc \"select count(*) from notifications n "
                "join reviews r on r.id = n.review_id where r.author_id = 'readme-breaker'\"").strip() == "1")


def main():
    readme = open(os.path.join(ROOT, "README.md")).read()
    found = sections(readme)
    for wanted in ["Try it", "One review's journey", "Break a job on purpose, and repair it"]:
        if wanted not in found:
            fail(f"no section '{wanted}' with code blocks")
    stack = Stack()
    try:
        stack.sh("scripts/dev >/dev/null 2>&1 || { tail -30 \"$DEV_DIR\"/*.log; scripts/dev; }")
        for part, run in [("Try it", try_it), ("One review's journey", journey),
                          ("Break a job on purpose, and repair it", walkthrough)]:
            run(stack, found[part])
            print(f"README: {part}: ok")
    finally:
        stack.down()


if __name__ == "__main__":
    main()
