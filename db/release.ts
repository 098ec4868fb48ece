import { configOrExit } from '../lib/lifecycle.js';
import { createLogger } from '../lib/logger.js';
import { migrate } from './migrate.js';

/** Procfile `release`: migrate both databases (creating them if missing). */
async function main(): Promise<void> {
  const config = configOrExit('release');
  const log = createLogger(config.LOG_LEVEL, 'release', config.LOG_FORMAT === 'pretty');
  const write = await migrate(config.DATABASE_URL, 'write', log);
  const read = await migrate(config.READ_DATABASE_URL, 'read', log);
  log.info({ write, read }, 'migrations up to date');
}

main().catch((err: unknown) => {
  console.error(`release: ${(err as Error).message}`);
  process.exit(1);
});
