import { runProcess } from '../lib/lifecycle.js';
import { startWeb } from './server.js';

void runProcess('web', startWeb);
