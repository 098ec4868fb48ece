import { startWeb, type WebHandle } from '../../api/server.js';
import { createTestEnv, testLog, type TestEnv } from './env.js';
import pg from 'pg';
import { createDb, type Db } from '../../db/pool.js';

export interface WebFixture {
  env: TestEnv;
  web: WebHandle;
  base: string;
  /** Plain pg pools, for the tests' own SQL. */
  write: pg.Pool;
  read: pg.Pool;
  /** The system's own SQL layer on the same databases, for calling its functions. */
  writeDb: Db;
  readDb: Db;
  stop(): Promise<void>;
}

export async function startTestWeb(overrides: Record<string, string> = {}): Promise<WebFixture> {
  const env = await createTestEnv(overrides);
  const web = await startWeb(env.config, testLog);
  const write = new pg.Pool({ connectionString: env.config.DATABASE_URL, max: 4 });
  const read = new pg.Pool({ connectionString: env.config.READ_DATABASE_URL, max: 4 });
  // Idle clients are terminated when the run drops its databases; that is expected, not a failure.
  write.on('error', () => undefined);
  read.on('error', () => undefined);
  const writeDb = createDb(env.config.DATABASE_URL, { name: 'test', max: 4, log: testLog });
  const readDb = createDb(env.config.READ_DATABASE_URL, { name: 'test', max: 4, log: testLog });
  return {
    env,
    web,
    base: `http://127.0.0.1:${web.port}`,
    write,
    read,
    writeDb,
    readDb,
    async stop() {
      await web.stop();
      await Promise.all([write.end(), read.end(), writeDb.end(), readDb.end()]);
    },
  };
}

export interface Reply {
  status: number;
  headers: Headers;
  body: unknown;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests read arbitrary JSON
  json: any;
}

export async function call(
  base: string,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Reply> {
  const init: RequestInit = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
    (init.headers as Record<string, string>)['content-type'] ??= 'application/json';
  }
  const res = await fetch(base + path, init);
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON; keep the text
  }
  return { status: res.status, headers: res.headers, body: parsed, json: parsed };
}

export async function createProduct(
  base: string,
  p: { name?: string; category?: string; price: string | number; stock: number },
): Promise<number> {
  const r = await call(base, 'POST', '/products', { name: p.name ?? 'Widget', category: p.category ?? 'tools', price: p.price, stock: p.stock });
  if (r.status !== 201) throw new Error(`createProduct: ${r.status} ${JSON.stringify(r.body)}`);
  return r.json.id as number;
}
