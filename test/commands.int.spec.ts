import assert from 'node:assert/strict';
import { Proc } from './support/processes.js';

/** Every command of ours answers --help, and refuses a command line it cannot run in two lines, before touching anything. */
describe('command lines', () => {
  const commands: [string, string][] = [
    ['verify', 'scripts/verify.js'],
    ['rebuild', 'scripts/rebuild.js'],
    ['events', 'scripts/events.js'],
    ['prune', 'scripts/prune.js'],
    ['replay-failed', 'scripts/replay-failed.js'],
    ['loadgen', 'scripts/loadgen.js'],
  ];
  for (const [name, script] of commands) {
    it(`npm run ${name}: --help exits 0; an unknown option is one line and the synopsis, exit 2`, async () => {
      // Settings that cannot work: a command that got past its command line would fail differently.
      const env = { DATABASE_URL: 'postgres://127.0.0.1:1/none', READ_DATABASE_URL: 'postgres://127.0.0.1:1/none', REDIS_URL: 'redis://127.0.0.1:1' };
      assert.match(await new Proc(script, env, ['--help']).run(), new RegExp(`^usage: npm run ${name}`));
      const bad = new Proc(script, env, ['--bogus']);
      await assert.rejects(bad.run(), /exited 2/);
      assert.deepEqual(
        bad.output.trim().split('\n').map((l) => l.replace(/ .*/, '')),
        [`${name}:`, 'usage:'],
      );
    });
  }

  it('a bad value names the option', async () => {
    const bad = new Proc('scripts/verify.js', {}, ['--wait', 'soon']);
    await assert.rejects(bad.run(), /exited 2/);
    assert.match(bad.output, /^verify: --wait takes a number from 0 to 86400 \(got "soon"\)/);
    const events = new Proc('scripts/events.js', {}, ['park', '12']);
    await assert.rejects(events.run(), /exited 2/);
    assert.match(events.output, /^events: park takes one event id and --reason/);
  });
});
