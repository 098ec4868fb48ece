import { exitOnSignalWhileLoading } from '../../lib/early-signals.js';

// Stop requests while the modules below load exit 0; then runProcess takes over.
exitOnSignalWhileLoading();
const { runProcess } = await import('../../lib/lifecycle.js');
const { startProjector } = await import('./projector.js');

void runProcess('worker', startProjector);
