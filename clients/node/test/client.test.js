// node --test: the Node.js client against a real gateway.
//
// With TANDEM_GATEWAY_ADDRESS set (tests/gateway/test_node_client.py does this), it uses
// that gateway, which must run the GridWorld stand-in task. Otherwise it starts one
// itself from the repository's virtual environment (`make setup` builds it).

'use strict';

const test = require('node:test');
const assert = require('node:assert');
const net = require('net');
const path = require('path');
const fs = require('fs');
const { spawn } = require('child_process');
const { GatewayClient, decodeTensor, encodeTensor } = require('../client.js');

const REPO = path.resolve(__dirname, '..', '..', '..');
let gatewayProcess = null;
let address = process.env.TANDEM_GATEWAY_ADDRESS || null;

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function startGateway() {
  const exe = path.join(REPO, '.venv', 'bin', 'tandem-gateway');
  if (!fs.existsSync(exe)) throw new Error(`${exe} is missing: run make setup`);
  const basePort = await freePort();
  gatewayProcess = spawn(exe, ['--listen', '127.0.0.1:0', '--log-json', '--base-port', String(basePort),
    '--timeout-wait', '10', '--env-args', '--task', 'gridworld'], { stdio: ['ignore', 'ignore', 'pipe'] });
  return new Promise((resolve, reject) => {
    let buffered = '';
    const timer = setTimeout(() => reject(new Error('gateway did not become ready')), 60000);
    gatewayProcess.stderr.on('data', (chunk) => {
      buffered += chunk.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop();
      for (const line of lines) {
        if (line.includes('"gateway ready"')) {
          clearTimeout(timer);
          resolve(`127.0.0.1:${JSON.parse(line).port}`);
        }
      }
    });
    gatewayProcess.on('exit', (code) => reject(new Error(`gateway exited with ${code}`)));
  });
}

test.before(async () => {
  if (!address) address = await startGateway();
});

test.after(() => {
  if (gatewayProcess) gatewayProcess.kill('SIGTERM');
});

test('tensors round-trip as little-endian bytes and bad lengths are refused', () => {
  const t = encodeTensor('FLOAT32', [2, 2], new Float32Array([1, -2, 3.5, 0]));
  const back = decodeTensor(t);
  assert.deepStrictEqual(Array.from(back.data), [1, -2, 3.5, 0]);
  assert.deepStrictEqual(back.shape, [2, 2]);
  assert.throws(() => decodeTensor({ ...t, data: t.data.subarray(1) }), /bytes do not match/);
});

test('describe lists the GridWorld behavior with its branches and visual observation', async () => {
  const client = new GatewayClient({ address });
  try {
    const d = await client.describe();
    assert.strictEqual(d.mode, 'GATEWAY_MODE_REMOTE_CONTROL');
    assert.strictEqual(d.api_version, 'v1');
    const grid = d.behaviors.find((b) => b.name.startsWith('GridWorld'));
    assert.ok(grid, 'GridWorld behavior');
    assert.deepStrictEqual(grid.action_spec.discrete_branches.map(Number), [5, 2]);
    assert.ok(grid.observations.some((o) => o.shape.length === 3));
    assert.ok(d.instances.length >= 1 && d.instances[0].alive);
  } finally {
    client.close();
  }
});

test('plays episodes with random actions that respect the masks', async () => {
  const client = new GatewayClient({ address });
  try {
    const result = await client.playEpisodes({ episodes: 3, maxSteps: 1000, seed: 7 });
    assert.ok(result.episodes.length >= 3, `episodes ended: ${result.episodes.length}`);
    assert.strictEqual(result.maskedChosen, 0);
    for (const ep of result.episodes) {
      assert.ok(Number.isFinite(ep.return));
      assert.ok(ep.length >= 1 && ep.length <= 100);
    }
  } finally {
    client.close();
  }
});

test('an out-of-range action is INVALID_ARGUMENT naming the field, and play goes on', async () => {
  const client = new GatewayClient({ address });
  try {
    const stream = client.play();
    const response = await stream.request({ reset: { environment_parameters: {} } });
    const bs = response.steps.behaviors[0];
    const n = Number(bs.decision.agent_ids.shape[0]);
    const bad = {
      instance: bs.instance,
      behavior: bs.behavior,
      agent_ids: bs.decision.agent_ids,
      discrete: encodeTensor('INT32', [n, 2], new Int32Array(n * 2).fill(9)),
    };
    await assert.rejects(stream.request({ step: { actions: [bad] } }), (err) => {
      assert.strictEqual(err.code, 3); // INVALID_ARGUMENT
      assert.match(err.details, /step\.actions\[0\]\.discrete/);
      return true;
    });
    const again = await client.playEpisodes({ episodes: 1, maxSteps: 500, seed: 1 });
    assert.ok(again.episodes.length >= 1);
  } finally {
    client.close();
  }
});

test('the command line prints a JSON summary and exits 0', async () => {
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'client.js'), '--address', address,
    '--episodes', '2', '--seed', '3'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (c) => { out += c; });
  child.stderr.on('data', (c) => { err += c; });
  const code = await new Promise((resolve) => child.on('exit', resolve));
  assert.strictEqual(code, 0, err);
  const summary = JSON.parse(out);
  assert.ok(summary.episodes.length >= 2);
  assert.strictEqual(summary.describe.mode, 'GATEWAY_MODE_REMOTE_CONTROL');
});

test('a bad option is reported with exit status 2', async () => {
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'client.js'), '--bogus', '1'],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (c) => { err += c; });
  const code = await new Promise((resolve) => child.on('exit', resolve));
  assert.strictEqual(code, 2);
  assert.match(err, /unknown option --bogus/);
});
