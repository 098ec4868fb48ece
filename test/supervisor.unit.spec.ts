import assert from 'node:assert/strict';
import { Supervisor, type Program } from '../scripts/supervisor.js';

/** A program running `node -e script` (real child processes; nothing else is needed). */
function node(name: string, script: string): Program {
  return { name, command: `"${process.execPath}" -e '${script}'`, cwd: process.cwd(), env: process.env };
}

/** Prints "up", then stays until SIGTERM, on which it exits with `code` after `ms`. */
const untilTerm = (code: number, ms = 0) => `console.log("up"); process.on("SIGTERM", () => setTimeout(() => process.exit(${code}), ${ms})); setInterval(() => {}, 1000)`;

function supervise(programs: Program[], opts: Partial<ConstructorParameters<typeof Supervisor>[1]> = {}) {
  const lines: string[] = [];
  const s = new Supervisor(programs, { restarts: 2, restartDelayMs: 50, killTimeoutMs: 10_000, write: (line) => lines.push(line), ...opts });
  const waitFor = async (re: RegExp, count = 1) => {
    for (let i = 0; i < 200 && lines.filter((l) => re.test(l)).length < count; i++) await new Promise((r) => setTimeout(r, 25));
    assert.ok(lines.filter((l) => re.test(l)).length >= count, `no ${count}× ${re} in:\n${lines.join('\n')}`);
  };
  return { s, lines, waitFor };
}

describe('Supervisor (unit): the processes of npm start', function () {
  this.timeout(20_000);

  it('prefixes each line with its padded name, and a stop ends every process', async () => {
    const { s, lines, waitFor } = supervise([node('web.1', untilTerm(0)), node('worker.12', untilTerm(0))]);
    await waitFor(/up$/, 2);
    assert.ok(s.allRunning());
    s.stop();
    await s.done;
    assert.ok(lines.includes('[web.1    ] up'), lines.join('\n'));
    assert.ok(lines.includes('[worker.12] up'), lines.join('\n'));
    assert.ok(lines.includes('[web.1    ] exited with code 0'), lines.join('\n'));
    assert.equal(s.failed, undefined);
  });

  it('once stopping, restarts nothing, even a process that exits non-zero (its shutdown deadline passed)', async () => {
    const { s, lines, waitFor } = supervise([node('worker.1', untilTerm(1, 100)), node('web.1', untilTerm(0))]);
    await waitFor(/up$/, 2);
    s.stop();
    await s.done;
    await new Promise((r) => setTimeout(r, 200)); // past the restart delay
    assert.equal(lines.filter((l) => /up$/.test(l)).length, 2, lines.join('\n'));
    assert.ok(lines.includes('[worker.1] exited with code 1'), lines.join('\n'));
    assert.ok(!lines.some((l) => /restart/.test(l)), lines.join('\n'));
  });

  it('a second stop kills at once a process that does not end on SIGTERM', async () => {
    const stubborn = node('relay.1', 'console.log("up"); process.on("SIGTERM", () => console.log("not yet")); setInterval(() => {}, 1000)');
    const { s, lines, waitFor } = supervise([stubborn]);
    await waitFor(/up$/);
    s.stop();
    await waitFor(/not yet$/);
    const t0 = Date.now();
    s.stop();
    await s.done;
    assert.ok(Date.now() - t0 < 2000);
    assert.ok(lines.includes('[relay.1] exited on SIGKILL'), lines.join('\n'));
  });

  it('the kill timeout ends a process that ignores SIGTERM', async () => {
    const stubborn = node('relay.1', 'console.log("up"); process.on("SIGTERM", () => {}); setInterval(() => {}, 1000)');
    const { s, lines, waitFor } = supervise([stubborn], { killTimeoutMs: 300 });
    await waitFor(/up$/);
    s.stop();
    await s.done;
    assert.ok(lines.includes('[relay.1] exited on SIGKILL'), lines.join('\n'));
  });

  it('restarts a process that exits on its own, and stops everything when it keeps failing', async () => {
    const { s, lines } = supervise([node('worker.1', 'console.error("boom"); process.exit(3)'), node('web.1', untilTerm(0))]);
    await s.done;
    assert.equal(lines.filter((l) => /boom$/.test(l)).length, 3, lines.join('\n')); // the first run and two restarts
    assert.ok(lines.some((l) => /\[worker\.1\] exited with code 3; restarting it in 50 ms \(1 restart left\)/.test(l)), lines.join('\n'));
    assert.equal(s.failed, 'worker.1 exited with code 3');
    assert.ok(lines.includes('[web.1   ] exited with code 0'), lines.join('\n'));
  });

  it('counts a process as exited when it exits, even if a process it started keeps its output open', async () => {
    const parent = node('web.1', 'const { spawn } = require("node:child_process"); spawn("sleep", ["8"], { stdio: "inherit", detached: true }).unref(); console.log("up"); process.on("SIGTERM", () => process.exit(0)); setInterval(() => {}, 1000)');
    const { s, waitFor } = supervise([parent]);
    await waitFor(/up$/);
    const t0 = Date.now();
    s.stop();
    await s.done;
    assert.ok(Date.now() - t0 < 5000, `done after ${Date.now() - t0} ms`);
  });
});
