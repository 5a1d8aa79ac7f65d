// A Node.js service whose one thread measures its own phases: `worker` calls
// `preprocess` and `predict` in turn and times each with the process's CPU clock
// (the script's only busy thread is the main one), so the time each function holds is
// known exactly.
//
// Usage: node --perf-basic-prof phases.js SECONDS TRUTH.json
'use strict';
const fs = require('fs');

const table = new Float64Array(4096).map((_, i) => (i * 31) % 977);

function preprocess(n) {
  let s = 0;
  for (let i = 0; i < n; i++) {
    s += Math.sqrt(table[(i * 7) & 4095] + i);
  }
  return s;
}

function predict(n) {
  let s = 0;
  for (let i = 0; i < n; i++) {
    s += table[i & 4095] * (i % 13);
  }
  return s;
}

function cpuNs() {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) * 1000;
}

function worker(deadline, phases) {
  let sink = 0;
  while (Date.now() < deadline) {
    const t0 = cpuNs();
    sink += preprocess(200000);
    const t1 = cpuNs();
    sink += predict(400000);
    const t2 = cpuNs();
    phases.preprocess += t1 - t0;
    phases.predict += t2 - t1;
  }
  return sink;
}

const seconds = Number(process.argv[2]);
const phases = { preprocess: 0, predict: 0 };
const start = cpuNs();
worker(Date.now() + seconds * 1000, phases);
const truth = {
  worker_ns: cpuNs() - start,
  preprocess: phases.preprocess,
  predict: phases.predict,
  process_ns: cpuNs(),
};
fs.writeFileSync(process.argv[3], JSON.stringify(truth));
