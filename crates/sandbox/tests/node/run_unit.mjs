// Runs a module rewritten by Herd's instrumentation in Node.js (V8), with Node's own WASI for
// the unit's only channels (stdin from a file, stdout to a file) and the host half of Herd's
// determinism done here exactly as Herd's sandbox does it (crates/sandbox/src/wasi.rs and
// meter.rs): the fuel budget handed out a slice at a time through `herd.refuel`, 100 fuel plus
// one per byte moved for every WASI call, a fixed clock, the unit's seeded random stream (read
// from a file the test writes), no arguments, environment or preopened directories.
//
// Usage: node run_unit.mjs MODULE.wasm INPUT OUTPUT RANDOM FUEL RESULT.json
// RESULT.json gets {"status": ..., "fuel": N, ...}; OUTPUT gets the unit's stdout.

import { readFileSync, openSync, closeSync, writeFileSync, statSync } from 'node:fs';
import { WASI } from 'node:wasi';

const [modulePath, inputPath, outputPath, randomPath, fuelText, resultPath] = process.argv.slice(2);

const SLICE = 5_000_000n; // YIELD_FUEL
const HOST_CALL_FUEL = 100n;
const FIXED_TIME_NS = 1_735_689_600_000_000_000n;
const ERRNO = { SUCCESS: 0, BADF: 8, FAULT: 21, INVAL: 28, NOTSUP: 58, SPIPE: 70 };
const MAX_IOVS = 1024;

class OutOfFuel extends Error {}
class StackExhausted extends Error {}

const budget = BigInt(fuelText);
let reserve = 0n;
let fuelGlobal = null;
let memory = null;

function refuel() {
  const fuel = fuelGlobal.value;
  if (reserve + fuel < 0n) throw new OutOfFuel();
  const deficit = fuel < 0n ? -fuel : 0n;
  let take = deficit + SLICE;
  if (take > reserve) take = reserve;
  reserve -= take;
  fuelGlobal.value = fuel + take;
}

function charge(bytes) {
  const after = fuelGlobal.value - (HOST_CALL_FUEL + BigInt(bytes));
  if (reserve + after < 0n) throw new OutOfFuel();
  fuelGlobal.value = after;
}

const view = () => new DataView(memory.buffer);
const inBounds = (ptr, len) => ptr + len <= memory.buffer.byteLength;

// The iovecs' (ptr, len) pairs, or null if any lies outside memory (EFAULT, uncharged).
function iovecs(iovs, count) {
  if (count < 0 || count > MAX_IOVS) return { errno: ERRNO.INVAL };
  const out = [];
  for (let i = 0; i < count; i++) {
    const entry = (iovs >>> 0) + i * 8;
    if (!inBounds(entry, 8)) return { errno: ERRNO.FAULT };
    const ptr = view().getUint32(entry, true);
    const len = view().getUint32(entry + 4, true);
    if (!inBounds(ptr, len)) return { errno: ERRNO.FAULT };
    out.push([ptr, len]);
  }
  return { ranges: out };
}

const inputLength = statSync(inputPath).size;
let inputRead = 0;
const random = readFileSync(randomPath);
let randomPos = 0;

const stdin = openSync(inputPath, 'r');
const stdout = openSync(outputPath, 'w');
const stderr = openSync('/dev/null', 'w');
const wasi = new WASI({ version: 'preview1', args: [], env: {}, preopens: {}, stdin, stdout, stderr, returnOnExit: true });
const node = wasi.wasiImport;

// Writes fixed values (u32 or u64) for calls whose answers are constants.
function answer(writes) {
  charge(0);
  for (const [ptr, value, wide] of writes) {
    const p = ptr >>> 0;
    if (!inBounds(p, wide ? 8 : 4)) return ERRNO.FAULT;
    if (wide) view().setBigUint64(p, value, true);
    else view().setUint32(p, Number(value), true);
  }
  return ERRNO.SUCCESS;
}
const constant = (code) => { charge(0); return code; };
const isStd = (fd) => fd >= 0 && fd <= 2;

const herdWasi = {
  fd_write(fd, iovs, count, written) {
    const { ranges, errno } = iovecs(iovs, count);
    if (!ranges) return errno;
    charge(ranges.reduce((sum, [, len]) => sum + len, 0));
    if (fd !== 1 && fd !== 2) return ERRNO.BADF;
    return node.fd_write(fd, iovs, count, written);
  },
  fd_read(fd, iovs, count, read) {
    if (fd !== 0) { charge(0); return ERRNO.BADF; }
    const { ranges, errno } = iovecs(iovs, count);
    if (!ranges) return errno;
    const wanted = ranges.reduce((sum, [, len]) => sum + len, 0);
    charge(Math.min(wanted, inputLength - inputRead));
    const result = node.fd_read(fd, iovs, count, read);
    if (result === ERRNO.SUCCESS) inputRead += view().getUint32(read >>> 0, true);
    return result;
  },
  random_get(buf, len) {
    charge(len >>> 0);
    if (!inBounds(buf >>> 0, len >>> 0)) return ERRNO.FAULT;
    if (randomPos + (len >>> 0) > random.length) throw new Error('the random stream file is too short');
    new Uint8Array(memory.buffer, buf >>> 0, len >>> 0).set(random.subarray(randomPos, randomPos + (len >>> 0)));
    randomPos += len >>> 0;
    return ERRNO.SUCCESS;
  },
  fd_fdstat_get(fd, ptr) {
    charge(0);
    if (!isStd(fd)) return ERRNO.BADF;
    const p = ptr >>> 0;
    if (!inBounds(p, 24)) return ERRNO.FAULT;
    new Uint8Array(memory.buffer, p, 24).fill(0);
    view().setUint8(p, 2); // character device
    view().setBigUint64(p + 8, fd === 0 ? 1n << 1n : 1n << 6n, true);
    return ERRNO.SUCCESS;
  },
  proc_exit: node.proc_exit,
  args_sizes_get: (argc, size) => answer([[argc, 0n, false], [size, 0n, false]]),
  environ_sizes_get: (count, size) => answer([[count, 0n, false], [size, 0n, false]]),
  args_get: () => constant(ERRNO.SUCCESS),
  environ_get: () => constant(ERRNO.SUCCESS),
  clock_time_get: (_clock, _precision, time) => answer([[time, FIXED_TIME_NS, true]]),
  clock_res_get: (_clock, res) => answer([[res, 1n, true]]),
  fd_close: (fd) => constant(isStd(fd) ? ERRNO.SUCCESS : ERRNO.BADF),
  fd_seek: (fd) => constant(isStd(fd) ? ERRNO.SPIPE : ERRNO.BADF),
  fd_prestat_get: () => constant(ERRNO.BADF),
  fd_prestat_dir_name: () => constant(ERRNO.BADF),
  poll_oneoff: () => constant(ERRNO.NOTSUP),
  sched_yield: () => constant(ERRNO.SUCCESS),
};

const herd = {
  refuel,
  stack_exhausted() { throw new StackExhausted(); },
};

const module = new WebAssembly.Module(readFileSync(modulePath));
const instance = new WebAssembly.Instance(module, { wasi_snapshot_preview1: herdWasi, herd });
memory = instance.exports.memory;
fuelGlobal = instance.exports.__herd_fuel;
const first = budget < SLICE ? budget : SLICE;
reserve = budget - first;
fuelGlobal.value = first;

let result;
try {
  const code = wasi.start(instance);
  result = code === 0 ? { status: 'success' } : { status: 'exit_code', code };
} catch (error) {
  if (error instanceof OutOfFuel) result = { status: 'out_of_fuel' };
  else if (error instanceof StackExhausted) result = { status: 'trap', kind: 'stack_overflow' };
  else if (error instanceof WebAssembly.RuntimeError) result = { status: 'trap', message: error.message };
  else throw error;
}
const burned = budget - (reserve + fuelGlobal.value);
if (result.status === 'out_of_fuel' || burned > budget) {
  result = { status: 'out_of_fuel', fuel: budget.toString() };
} else {
  result.fuel = burned.toString();
}
closeSync(stdin);
closeSync(stdout);
closeSync(stderr);
writeFileSync(resultPath, JSON.stringify(result));
