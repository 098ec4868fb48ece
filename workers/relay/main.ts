import { runProcess } from '../../lib/lifecycle.js';
import { startRelay } from './start.js';

void runProcess('relay', startRelay);
