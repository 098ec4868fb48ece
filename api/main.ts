import { exitOnSignalWhileLoading } from '../lib/early-signals.js';

// Stop requests while the modules below load exit 0; then runProcess takes over.
exitOnSignalWhileLoading();
const { runProcess } = await import('../lib/lifecycle.js');
const { startWeb } = await import('./server.js');

void runProcess('web', startWeb);
