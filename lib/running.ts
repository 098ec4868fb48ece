import fs from 'node:fs';
import path from 'node:path';
import { projectRoot } from './paths.js';

/**
 * The system `npm start` is running on this machine, as it describes itself
 * in .data/system.json (written once everything answers, removed when it
 * stops): so that `npm run verify`, `events`, `loadgen`… check the databases
 * and Redis it started (its own ones with --own included), not the defaults.
 */
export interface RunningSystem {
  pid: number;
  /** DATABASE_URL, READ_DATABASE_URL, REDIS_URL, ADMIN_PASSWORD, as given to its processes. */
  env: Record<string, string>;
  /** Base URL of each web process. */
  webs: string[];
}

export const SYSTEM_FILE = path.join(projectRoot, '.data', 'system.json');

export function writeRunningSystem(system: RunningSystem): void {
  fs.mkdirSync(path.dirname(SYSTEM_FILE), { recursive: true });
  fs.writeFileSync(SYSTEM_FILE, JSON.stringify(system, null, 2), { mode: 0o600 });
}

/** Remove the file if it describes this process's system (a second npm start that fails must not remove the first's). */
export function removeRunningSystem(): void {
  try {
    if ((JSON.parse(fs.readFileSync(SYSTEM_FILE, 'utf8')) as RunningSystem).pid !== process.pid) return;
  } catch {
    // none, or unreadable: nothing of ours to keep
  }
  fs.rmSync(SYSTEM_FILE, { force: true });
}

/** The running system, if its file is there and its npm start still lives. */
export function runningSystem(): RunningSystem | undefined {
  let system: RunningSystem;
  try {
    system = JSON.parse(fs.readFileSync(SYSTEM_FILE, 'utf8')) as RunningSystem;
    process.kill(system.pid, 0);
  } catch {
    return undefined;
  }
  return system;
}
