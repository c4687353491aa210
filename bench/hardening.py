"""What the hardening costs the proxy path, measured side by side in one run: ``observatory serve``
of this tree against the same command of an earlier commit (default ``0a3d191``, before the body is
validated and bounded in the gateway, TPM reserved and settled, the model held to the catalog and
upstream answers checked whole), both in front of the same local upstream peer, with API-key auth
and RPM + TPM limits on (so the reserve and settle steps run), driven by ``wrk``, the two sides'
runs interleaved round by round.

Run from the repository root: ``.venv/bin/python bench/hardening.py [--base 0a3d191] [--duration 5]
[--rounds 4]``. The earlier tree is checked out with ``git worktree`` under a temporary folder and
imported through a link farm that lays it out as the ``gpt_observatory`` namespace (the
distribution's ``package-dir`` map). Both servers, the upstream and ``wrk`` share this machine's
cores: read the figures as ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway import PROXY_CHAT, free_port, lua, process, wrk  # bench/gateway.py: its wrk driver

REPO = Path(__file__).resolve().parents[1]
LAYOUT = {"telemetry": "telemetry", "serving_hooks": "serving_hooks", "flows": "flows", "dashboards": "dashboards"}


def link_farm(tree: Path, into: Path) -> Path:
    """``into/gpt_observatory`` laid out as the installed namespace of ``tree`` (symlinks)."""
    package = into / "gpt_observatory"
    package.mkdir(parents=True)
    for entry in (tree / "gpt_observatory").iterdir():
        (package / entry.name).symlink_to(entry)
    for name, folder in LAYOUT.items():
        (package / name).symlink_to(tree / folder)
    (into / "tests").symlink_to(tree / "tests")
    return into


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="0a3d191", help="the earlier commit to compare with")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved runs per side and concurrency")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian package 'wrk')")
    sys.path.insert(0, str(REPO))
    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    work = Path(tempfile.mkdtemp(prefix="bench-hardening-"))
    base_tree = work / "base"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base_tree), args.base], check=True)
    try:
        trees = {"base": link_farm(base_tree, work / "base-farm"), "now": REPO}
        key, _ = ApiKeyStore(work / "keys.json").create("bench", ["inference"])
        up_port = free_port()
        upstream = f"http://127.0.0.1:{up_port}/v1"
        env = {"OBSERVATORY_STATE_DIR": str(work / "state"), "PYTHONPATH": str(REPO)}
        with contextlib.ExitStack() as stack:
            stack.enter_context(process([sys.executable, "-m", "tests.serving_hooks.upstream_peer", "--port",
                                         str(up_port)], f"{upstream}/models", env))
            urls, pids = {}, {}
            for side, tree in trees.items():
                port = free_port()
                cmd = [sys.executable, "-m", "gpt_observatory.commands.serve", "--backend", "upstream",
                       "--upstream-url", upstream, "--model", "up-model", "--port", str(port),
                       "--api-keys-file", str(work / "keys.json"),
                       "--requests-per-minute", str(10**9), "--tokens-per-minute", str(10**12)]
                side_env = {"OBSERVATORY_STATE_DIR": str(work / f"state-{side}"), "PYTHONPATH": str(tree)}
                pids[side] = stack.enter_context(process(cmd, f"http://127.0.0.1:{port}/healthz", side_env, tree))
                urls[side] = f"http://127.0.0.1:{port}/v1/chat/completions"
            script = lua({**PROXY_CHAT, "max_tokens": 16}, key, work)
            runs: dict[tuple[str, int], list[dict[str, float]]] = {}
            for side in trees:  # warm-up
                wrk(urls[side], script, 16, 1)
            for _ in range(args.rounds):
                for connections in (1, 16):
                    for side in trees:
                        before = cpu_seconds(pids[side])
                        figures = wrk(urls[side], script, connections, args.duration)
                        requests = figures["rps"] * max(1, round(args.duration))
                        figures["cpu_us"] = (cpu_seconds(pids[side]) - before) / requests * 1e6
                        runs.setdefault((side, connections), []).append(figures)
        for connections in (1, 16):
            base, now = runs[("base", connections)], runs[("now", connections)]
            b_rps, n_rps = max(r["rps"] for r in base), max(r["rps"] for r in now)
            b_p50, n_p50 = min(r["p50_ms"] for r in base), min(r["p50_ms"] for r in now)
            b_cpu = sorted(r["cpu_us"] for r in base)[len(base) // 2]
            n_cpu = sorted(r["cpu_us"] for r in now)[len(now) // 2]
            print(f"c={connections}: {args.base} {b_rps:.0f} req/s p50 {b_p50:.3f} ms gateway CPU {b_cpu:.0f} us/req | "
                  f"now {n_rps:.0f} req/s p50 {n_p50:.3f} ms CPU {n_cpu:.0f} us/req | throughput ratio "
                  f"{n_rps / b_rps:.3f} (target >= 0.95), CPU ratio {n_cpu / b_cpu:.3f}", flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)], check=False)


if __name__ == "__main__":
    main()
