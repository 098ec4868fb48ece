import { runProcess } from '../../lib/lifecycle.js';
import { startProjector } from './projector.js';

void runProcess('worker', startProjector);
