// The real mesh for the tests: `python -m localdev.serve` (the repository's venv), which prints its targets
// as one JSON line and takes commands on stdin; closing its stdin stops everything it started.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { resolve } from "node:path";

export interface Mesh {
  profileTarget: string;
  reportingTarget: string;
  profilePorts: number[];
  command(line: string): Promise<{ ok: boolean; error?: string }>;
  stop(): Promise<void>;
}

const ROOT = resolve(import.meta.dirname, "../../..");

export async function startMesh(): Promise<Mesh> {
  const python = process.env.PROFILEMESH_PYTHON ?? resolve(ROOT, ".venv/bin/python");
  const child = spawn(python, ["-m", "localdev.serve", "--replicas", "2"], {
    cwd: ROOT,
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const first = await lines.next();
  if (first.done) throw new Error("localdev.serve exited before the mesh was up");
  let info;
  try {
    info = JSON.parse(first.value);
  } catch {
    // Closing its stdin stops everything it started; a test that can't use the mesh must not hang on it.
    const exited = new Promise((done) => child.once("exit", done));
    child.stdin.end();
    await exited;
    throw new Error(`localdev.serve's first line is not its JSON description: ${first.value.slice(0, 80)}`);
  }
  return {
    ...info,
    async command(line: string) {
      child.stdin.write(line + "\n");
      const reply = await lines.next();
      return JSON.parse(reply.value);
    },
    async stop() {
      const exited = new Promise((done) => child.once("exit", done));
      child.stdin.end();
      await exited;
    },
  };
}
