"""Runs a command on a real pseudo-terminal and plays a script against it, like a person typing.

usage: pty-driver.py JSON   where JSON = {"argv": [...], "env": {...}, "steps": [[expect, send], ...]}
Each step waits (up to 20 s) for `expect` to appear in the output, then types `send`.
Prints the whole transcript, then a last line EXIT=<code>.
"""
import json, os, pty, select, sys, time

spec = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    os.execvpe(spec["argv"][0], spec["argv"], spec["env"])

out = b""

def read_some(timeout):
    global out
    r, _, _ = select.select([fd], [], [], timeout)
    if not r:
        return False
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        return None
    if not chunk:
        return None
    out += chunk
    return True

seen = 0
for expect, send in spec["steps"]:
    deadline = time.time() + 20
    want = expect.encode()
    while out.find(want, seen) == -1:
        if time.time() > deadline or read_some(0.1) is None:
            sys.stdout.write(out.decode("utf8", "replace") + "\nTIMEOUT waiting for " + expect + "\n")
            sys.exit(3)
    seen = out.find(want, seen) + len(want)
    time.sleep(0.05)
    os.write(fd, send.encode("latin-1"))

while read_some(5) is not None:
    pass
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf8", "replace"))
sys.stdout.write("\nEXIT=%d\n" % (os.waitstatus_to_exitcode(status)))
