"""Runs a command on a real pseudo-terminal and plays a script against it, like a person typing.

usage: pty-driver.py JSON   where JSON = {"argv": [...], "env": {...}, "steps": [[expect, send], ...]}
Each step waits (up to 20 s) for `expect` to appear in the output, then types `send`. An expect
starting with "re:" is a regular expression; "{1}" in its send is replaced by the first group.
Prints the whole transcript, then a last line EXIT=<code>.
"""
import json, os, pty, re, select, sys, time

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

def find(expect, start):
    if expect.startswith("re:"):
        m = re.compile(expect[3:].encode()).search(out, start)
        return (m.end(), m.group(1).decode() if m.groups() else "") if m else None
    i = out.find(expect.encode(), start)
    return (i + len(expect), "") if i != -1 else None

seen = 0
for expect, send in spec["steps"]:
    deadline = time.time() + 20
    hit = find(expect, seen)
    while hit is None:
        if time.time() > deadline or read_some(0.1) is None:
            sys.stdout.write(out.decode("utf8", "replace") + "\nTIMEOUT waiting for " + expect + "\n")
            sys.exit(3)
        hit = find(expect, seen)
    seen = hit[0]
    time.sleep(0.05)
    os.write(fd, send.replace("{1}", hit[1]).encode("latin-1"))

while read_some(5) is not None:
    pass
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf8", "replace"))
sys.stdout.write("\nEXIT=%d\n" % (os.waitstatus_to_exitcode(status)))
