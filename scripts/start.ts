import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { concurrently } from 'concurrently';
import { createDb } from '../db/pool.js';
import { createLogger } from '../lib/logger.js';
import { projectRoot } from '../lib/paths.js';
import { getConfig, ConfigError } from '../lib/config.js';
import { postgres, redis, withDatabase, type Service } from './local-services.js';
import { seedCatalogue } from './seed.js';

/**
 * npm start [-- --scale worker=3 --scale relay=2] [--seed] [--own]
 * The whole system on one machine: PostgreSQL and Redis (found or started),
 * the release phase, then every Procfile process, with prefixed, coloured
 * logs. Ctrl-C stops everything, our own databases included.
 */
const say = (line: string) => console.log(`\x1b[1mstart\x1b[0m  ${line}`);

const { values } = parseArgs({
  options: {
    scale: { type: 'string', multiple: true, default: [] },
    seed: { type: 'boolean', default: false },
    // Start our own PostgreSQL and Redis even when local ones answer.
    own: { type: 'boolean', default: false },
  },
});

function parseProcfile(): Map<string, string> {
  const procs = new Map<string, string>();
  for (const line of fs.readFileSync(path.join(projectRoot, 'Procfile'), 'utf8').split('\n')) {
    const m = /^([a-z]+):\s*(.+)$/.exec(line.trim());
    if (m) procs.set(m[1]!, m[2]!);
  }
  return procs;
}

function parseScale(specs: string[], procs: Map<string, string>): Map<string, number> {
  const scale = new Map([...procs.keys()].filter((k) => k !== 'release').map((k) => [k, 1]));
  for (const spec of specs.flatMap((s) => s.split(','))) {
    const m = /^([a-z]+)=(\d+)$/.exec(spec);
    if (!m || !scale.has(m[1]!)) throw new Error(`--scale takes name=count with name one of ${[...scale.keys()].join(', ')} (got "${spec}")`);
    scale.set(m[1]!, Number(m[2]));
  }
  return scale;
}

async function main(): Promise<void> {
  const procs = parseProcfile();
  const scale = parseScale(values.scale ?? [], procs);
  const owned: Service[] = [];
  const stopOwned = async () => {
    for (const s of owned.reverse()) await s.stop().catch(() => undefined);
    owned.length = 0;
  };
  try {
    const pgService = await postgres(say, values.own);
    if (pgService.origin === 'own') owned.push(pgService);
    const redisService = await redis(say, values.own);
    if (redisService.origin === 'own') owned.push(redisService);

    const env: Record<string, string> = {
      DATABASE_URL: process.env.DATABASE_URL ?? withDatabase(pgService.url, 'write_db'),
      READ_DATABASE_URL: process.env.READ_DATABASE_URL ?? withDatabase(pgService.url, 'read_db'),
      REDIS_URL: redisService.url,
      ADMIN_PASSWORD: process.env.ADMIN_PASSWORD ?? randomBytes(9).toString('base64url'),
    };
    const config = getConfig({ ...process.env, ...env });
    say(`PostgreSQL: ${pgService.origin} · Redis: ${redisService.origin} (${redisService.url})`);

    const release = spawnSync('sh', ['-c', procs.get('release')!], { cwd: projectRoot, env: { ...process.env, ...env }, stdio: 'inherit' });
    if (release.status !== 0) throw new Error('release (migrations) failed');
    if (values.seed) {
      const db = createDb(config.DATABASE_URL, { name: 'seed', max: 1, log: createLogger('warn', 'seed') });
      const n = await seedCatalogue(db);
      await db.end();
      say(n > 0 ? `seeded a demo catalogue of ${n} products` : 'catalogue already has products; --seed left it alone');
    }

    const colours = { web: 'cyan', relay: 'magenta', worker: 'yellow' } as Record<string, string>;
    const commands = [...scale].flatMap(([name, count]) =>
      Array.from({ length: count }, (_, i) => ({
        name: `${name}.${i + 1}`,
        // exec: the shell becomes the process, so the SIGTERM concurrently forwards reaches it and it
        // stops gracefully (exit 0) instead of the shell dying of the signal and being restarted.
        command: `exec ${procs.get(name)!}`,
        cwd: projectRoot,
        prefixColor: colours[name] ?? 'blue',
        // Like foreman, each extra web process gets its own port (PORT + 100 × i).
        env: { ...env, ...(name === 'web' ? { PORT: String(config.PORT + 100 * i) } : {}) },
      })),
    );
    const webs = scale.get('web') ?? 0;
    const base = `http://localhost:${config.PORT}`;
    say(`starting ${commands.map((c) => c.name).join(', ')}`);
    if (webs > 0) {
      say(`API        ${base}   (dashboard at /, OpenAPI at /openapi.json)`);
      say(`Bull Board ${base}/admin/queues   user: admin   password: ${env.ADMIN_PASSWORD}`);
      say(`try: curl -s -XPOST ${base}/orders -H 'content-type: application/json' -d '{"customer_id":1,"items":[{"product_id":1,"quantity":2}]}'`);
    }
    say('Ctrl-C stops everything');

    const { result } = concurrently(commands, {
      prefix: 'name',
      padPrefix: true,
      restartTries: 3,
      restartDelay: 1000,
      killSignal: 'SIGTERM',
      killTimeout: 12_000,
    });
    await result.catch(() => undefined); // a process that exited non-zero has logged why
  } finally {
    await stopOwned();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`start: ${err instanceof ConfigError ? `bad configuration: ${err.message}` : (err as Error).message}`);
    process.exit(1);
  },
);
