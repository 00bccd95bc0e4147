// profilemesh's TypeScript client: the generated ProfileService and ReportingService (protoc-gen-es, from
// protos/ by `buf generate`), over gRPC with @connectrpc/connect-node, with the same small layer as the
// Python client (profilemesh.client): typed errors by ErrorInfo reason, retries that are safe by
// construction, round robin over every replica, and an auto-resuming change feed.
import { readFileSync } from "node:fs";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ProfileService, type BatchGetProfileResult } from "./gen/profilemesh/profile/v1/profile_pb.js";
import { ReportingService } from "./gen/profilemesh/reporting/v1/reporting_pb.js";

// ---------------------------------------------------------------- errors

/** A failed call: `code` the gRPC status, `reason` the ErrorInfo reason ("" when gRPC made the error). */
export class ProfilemeshError extends Error {
  constructor(
    message: string,
    readonly code: Code,
    readonly reason: string = "",
    readonly field: string = "",
    readonly metadata: Record<string, string> = {},
  ) {
    super(message);
    this.name = new.target.name;
  }
}
export class InvalidArgument extends ProfilemeshError {}
/** The token was refused (another deployment's, altered): start without one after re-reading. */
export class InvalidResumeToken extends InvalidArgument {}
export class ProfileNotFound extends ProfilemeshError {}
export class ProfileExists extends ProfilemeshError {}
export class PermissionDenied extends ProfilemeshError {}
export class Unavailable extends ProfilemeshError {}
export class ClusterUnavailable extends Unavailable {}
export class PartitionUnavailable extends Unavailable {}
export class NoReplica extends Unavailable {}
/** A change may or may not have happened; retrying is safe (ensureCreated / ensureDeleted do it). */
export class OutcomeUnknown extends Unavailable {}
export class StreamEnded extends Unavailable {}
export class TooManyRequests extends ProfilemeshError {}
export class TooManyStreams extends TooManyRequests {}
export class DeadlineExceeded extends ProfilemeshError {}
/** OUT_OF_RANGE: the feed can't go on from the token; start again without one and re-read. */
export class FeedRestartRequired extends ProfilemeshError {}
export class EventsTrimmed extends FeedRestartRequired {}
export class EventsHistoryChanged extends FeedRestartRequired {}

type ErrorClass = new (m: string, c: Code, r?: string, f?: string, md?: Record<string, string>) => ProfilemeshError;
export const BY_REASON: Record<string, ErrorClass> = {
  PROFILE_NOT_FOUND: ProfileNotFound,
  PROFILE_EXISTS: ProfileExists,
  INVALID_ARGUMENT: InvalidArgument,
  CLUSTER_UNAVAILABLE: ClusterUnavailable,
  PARTITION_UNAVAILABLE: PartitionUnavailable,
  NO_REPLICA: NoReplica,
  OUTCOME_UNKNOWN: OutcomeUnknown,
  TOO_MANY_REQUESTS: TooManyRequests,
  TOO_MANY_STREAMS: TooManyStreams,
  TOO_MANY_STREAMS_FROM_CLIENT: TooManyStreams,
  STREAM_ENDED: StreamEnded,
  EVENTS_TRIMMED: EventsTrimmed,
  EVENTS_HISTORY_CHANGED: EventsHistoryChanged,
  DEADLINE_EXCEEDED: DeadlineExceeded,
};
// CANCELLED that this client did not cause (it aborts only watches it closes): a replica shutting down
// cancelled or refused the call, which may or may not have run, as with a connection lost mid-call.
const BY_CODE: Partial<Record<Code, ErrorClass>> = {
  [Code.Canceled]: Unavailable,
  [Code.InvalidArgument]: InvalidArgument,
  [Code.NotFound]: ProfileNotFound,
  [Code.AlreadyExists]: ProfileExists,
  [Code.PermissionDenied]: PermissionDenied,
  [Code.Unavailable]: Unavailable,
  [Code.ResourceExhausted]: TooManyRequests,
  [Code.DeadlineExceeded]: DeadlineExceeded,
  [Code.OutOfRange]: FeedRestartRequired,
};

interface Details {
  reason: string;
  field: string;
  metadata: Record<string, string>;
}

// google.rpc.ErrorInfo {reason = 1, domain = 2, metadata = 3} and BadRequest {field_violations = 1 {field = 1}},
// read by hand: the contract does not import error_details.proto, so no schema for them is generated.
function decodeDetails(details: { type: string; value: Uint8Array }[]): Details {
  const found: Details = { reason: "", field: "", metadata: {} };
  for (const detail of details) {
    const reader = new BinaryReader(detail.value);
    if (detail.type === "google.rpc.ErrorInfo") {
      let reason = "", domain = "";
      const metadata: Record<string, string> = {};
      while (reader.pos < reader.len) {
        const [no, wire] = reader.tag();
        if (no === 1) reason = reader.string();
        else if (no === 2) domain = reader.string();
        else if (no === 3) {
          const entry = new BinaryReader(reader.bytes());
          let key = "", value = "";
          while (entry.pos < entry.len) {
            const [n] = entry.tag();
            if (n === 1) key = entry.string();
            else value = entry.string();
          }
          metadata[key] = value;
        } else reader.skip(wire);
      }
      if (domain === "profilemesh") Object.assign(found, { reason, metadata });
    } else if (detail.type === "google.rpc.BadRequest") {
      while (reader.pos < reader.len) {
        const [no, wire] = reader.tag();
        if (no !== 1) { reader.skip(wire); continue; }
        const violation = new BinaryReader(reader.bytes());
        while (violation.pos < violation.len) {
          const [n, w] = violation.tag();
          if (n === 1 && !found.field) found.field = violation.string();
          else violation.skip(w);
        }
      }
    }
  }
  return found;
}

function typed(code: Code, message: string, details: Details): ProfilemeshError {
  let kind = BY_REASON[details.reason] ?? BY_CODE[code] ?? ProfilemeshError;
  if (details.field === "resume_token" && (kind === InvalidArgument)) kind = InvalidResumeToken;
  return new kind(message, code, details.reason, details.field, details.metadata);
}

/** Any failure of a call as its typed error. */
export function fromError(error: unknown): ProfilemeshError {
  if (error instanceof ProfilemeshError) return error;
  const failure = ConnectError.from(error);
  const details = decodeDetails(failure.details.filter((d): d is { type: string; value: Uint8Array } => "value" in d));
  // HTTP/2 REFUSED_STREAM (a replica shutting down) guarantees the call was not processed: UNAVAILABLE,
  // whichever code the transport gave it.
  const refused = /REFUSED_STREAM/.test(failure.rawMessage);
  return typed(refused ? Code.Unavailable : failure.code, failure.rawMessage, details);
}

// ---------------------------------------------------------------- retry policy

// Reasons with which the server says a change did not run (docs/clients.md, "Retries").
const NOTHING_RAN = new Set(["NO_REPLICA", "PARTITION_UNAVAILABLE", "CLUSTER_UNAVAILABLE", "TOO_MANY_REQUESTS"]);

function neverSent(error: ProfilemeshError): boolean {
  // A connection that could not be made: nothing left this client.
  return error.code === Code.Unavailable && !error.reason && /ECONNREFUSED|REFUSED_STREAM|connect/i.test(error.message);
}

export function retryable(kind: "read" | "change", error: ProfilemeshError): boolean {
  if (kind === "read") return error instanceof Unavailable || error instanceof TooManyRequests;
  return NOTHING_RAN.has(error.reason) || neverSent(error);
}

function final(kind: "read" | "change", error: ProfilemeshError): ProfilemeshError {
  if (kind === "change" && (error instanceof Unavailable || error instanceof DeadlineExceeded) && !retryable(kind, error)
      && !(error instanceof OutcomeUnknown)) {
    return new OutcomeUnknown(
      `${error.message}: the change may or may not have happened; retrying is safe (ensureCreated / ensureDeleted)`,
      error.code, error.reason, error.field, error.metadata);
  }
  return error;
}

export interface Options {
  /** PEM files, as the services use them (PROFILEMESH_GRPC_CA_FILE, _CERT_FILE, _KEY_FILE). */
  tls?: { caFile: string; certFile?: string; keyFile?: string };
  /** Deadline of a call, every attempt included (default 5000). */
  timeoutMs?: number;
  maxAttempts?: number;
  /** A watch gives up after this long without a message (default 60000). */
  maxOutageMs?: number;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const jitter = (ceiling: number) => ceiling / 2 + Math.random() * (ceiling / 2);

/** `ipv4:a:p,b:q`, `dns:///host:port` or `host:port` as one address per replica. */
export function addresses(target: string): string[] {
  const list = target.replace(/^ipv4:/, "").replace(/^dns:\/\/\//, "").split(",").filter(Boolean);
  if (list.length === 0) throw new Error(`no address in target ${JSON.stringify(target)}`);
  return list;
}

/** One transport per replica, picked round robin; a replica that failed to connect is skipped for a while. */
class Replicas<S extends typeof ProfileService | typeof ReportingService> {
  private readonly clients: Client<S>[];
  private readonly downUntil: number[];
  private next = 0;

  constructor(service: S, target: string, options: Options) {
    const tls = options.tls;
    const nodeOptions = tls
      ? { ca: readFileSync(tls.caFile), cert: tls.certFile ? readFileSync(tls.certFile) : undefined,
          key: tls.keyFile ? readFileSync(tls.keyFile) : undefined }
      : undefined;
    this.clients = addresses(target).map((address) => {
      const transport: Transport = createGrpcTransport({
        baseUrl: `${tls ? "https" : "http"}://${address}`,
        nodeOptions,
        pingIntervalMs: 30000,
      });
      return createClient(service, transport);
    });
    this.downUntil = this.clients.map(() => 0);
  }

  pick(): [Client<S>, number] {
    const now = Date.now();
    for (let i = 0; i < this.clients.length; i++) {
      const index = (this.next + i) % this.clients.length;
      if (this.downUntil[index] <= now) {
        this.next = index + 1;
        return [this.clients[index], index];
      }
    }
    const index = this.next++ % this.clients.length;
    return [this.clients[index], index];
  }

  failed(index: number, error: ProfilemeshError): void {
    if (error instanceof Unavailable && !error.reason) this.downUntil[index] = Date.now() + 1000;
  }
}

abstract class Base<S extends typeof ProfileService | typeof ReportingService> {
  protected readonly replicas: Replicas<S>;
  protected readonly timeoutMs: number;
  protected readonly maxAttempts: number;
  protected readonly maxOutageMs: number;

  constructor(service: S, target: string, options: Options = {}) {
    this.replicas = new Replicas(service, target, options);
    this.timeoutMs = options.timeoutMs ?? 5000;
    this.maxAttempts = options.maxAttempts ?? 5;
    this.maxOutageMs = options.maxOutageMs ?? 60000;
  }

  /** One unary call with the retry policy, every attempt within one deadline. */
  protected async call<T>(kind: "read" | "change", invoke: (client: Client<S>, timeoutMs: number) => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.timeoutMs;
    let attempts = 0; // calls that reached a replica: one that never did is tried until the deadline
    for (let tries = 0; ; tries++) {
      const [client, index] = this.replicas.pick();
      try {
        return await invoke(client, Math.max(deadline - Date.now(), 1));
      } catch (caught) {
        const error = fromError(caught);
        this.replicas.failed(index, error);
        if (!neverSent(error)) attempts++;
        const pause = Math.random() * Math.min(1000, 50 * 2 ** tries);
        if (attempts >= this.maxAttempts || !retryable(kind, error) || Date.now() + pause >= deadline) {
          throw final(kind, error);
        }
        await sleep(pause);
      }
    }
  }

  /** A server stream that reconnects on UNAVAILABLE and RESOURCE_EXHAUSTED, with backoff, bounded. */
  protected async *resuming<M>(open: (client: Client<S>, signal: AbortSignal) => AsyncIterable<M>,
                               onReconnect: () => void, closed?: AbortSignal): AsyncGenerator<M> {
    let failures = 0;
    let lastProgress = Date.now();
    for (;;) {
      const [client, index] = this.replicas.pick();
      const abort = new AbortController();
      let error: ProfilemeshError;
      try {
        const signal = closed ? AbortSignal.any([abort.signal, closed]) : abort.signal;
        for await (const message of open(client, signal)) {
          failures = 0;
          lastProgress = Date.now();
          yield message;
        }
        error = new StreamEnded("the stream ended without a status", Code.Unavailable);
      } catch (caught) {
        error = fromError(caught);
      } finally {
        abort.abort();
      }
      if (closed?.aborted) return;
      this.replicas.failed(index, error);
      const reconnect = error instanceof Unavailable || error instanceof TooManyRequests || error instanceof DeadlineExceeded;
      if (!reconnect || Date.now() - lastProgress > this.maxOutageMs) throw error;
      await sleep(jitter(Math.min(2000, 100 * 2 ** failures++)));
      onReconnect();
    }
  }
}

// ---------------------------------------------------------------- ProfileService

export interface Profile { user: string; fields: Record<string, string> }
export interface ProfileEvent { user: string; type: string; time: Date; partition: number; id: string; resumeToken: string }
export type BatchResult = { user: string; profile?: Profile; error?: ProfilemeshError };

export interface WatchOptions {
  resumeToken?: string;
  users?: string[];
  types?: string[];
  /** Called with every token (heartbeats too) once the event before it was handled: persist it there. */
  onToken?: (token: string) => void | Promise<void>;
}

/** The change feed: iterate it; it resumes by itself and throws FeedRestartRequired / InvalidResumeToken. */
export class EventWatch implements AsyncIterable<ProfileEvent> {
  resumeToken: string;
  reconnects = 0;
  private readonly closer = new AbortController();
  readonly closed: AbortSignal = this.closer.signal;

  /** Ends the iteration (and the stream). */
  close(): void {
    this.closer.abort();
  }

  constructor(private readonly client: ProfileClient, private readonly options: WatchOptions,
              private readonly stream: (watch: EventWatch) => AsyncGenerator<ProfileEvent>) {
    this.resumeToken = options.resumeToken ?? "";
  }

  [Symbol.asyncIterator](): AsyncIterator<ProfileEvent> {
    return this.stream(this);
  }
}

export class ProfileClient extends Base<typeof ProfileService> {
  constructor(target: string, options: Options = {}) {
    super(ProfileService, target, options);
  }

  async create(user: string, fields: Record<string, string>): Promise<void> {
    await this.call("change", (c, timeoutMs) => c.createProfile({ user, fields }, { timeoutMs }));
  }

  async get(user: string): Promise<Profile> {
    const reply = await this.call("read", (c, timeoutMs) => c.getProfile({ user }, { timeoutMs }));
    return { user: reply.user, fields: { ...reply.fields } };
  }

  async update(user: string, fields: Record<string, string>): Promise<void> {
    await this.call("change", (c, timeoutMs) => c.updateProfile({ user, fields }, { timeoutMs }));
  }

  async delete(user: string): Promise<void> {
    await this.call("change", (c, timeoutMs) => c.deleteProfile({ user }, { timeoutMs }));
  }

  /** Create unless it exists, resolving OutcomeUnknown by sending it again (ProfileExists then: done).
   * True when this call's create was confirmed. */
  async ensureCreated(user: string, fields: Record<string, string>, attempts = 5): Promise<boolean> {
    for (let i = 1; ; i++) {
      try {
        await this.create(user, fields);
        return true;
      } catch (error) {
        if (error instanceof ProfileExists) return false;
        if (!(error instanceof OutcomeUnknown) || i >= attempts) throw error;
      }
    }
  }

  async ensureDeleted(user: string, attempts = 5): Promise<boolean> {
    for (let i = 1; ; i++) {
      try {
        await this.delete(user);
        return true;
      } catch (error) {
        if (error instanceof ProfileNotFound) return false;
        if (!(error instanceof OutcomeUnknown) || i >= attempts) throw error;
      }
    }
  }

  /** BatchGetProfiles in chunks of up to 1000: one result per user, in order, the profile or its typed error;
   * members the server could not serve this time (a shard in trouble) are asked for again. */
  async getMany(users: string[], chunk = 500): Promise<BatchResult[]> {
    if (chunk < 1 || chunk > 1000) throw new RangeError(`chunk must be 1 to 1000, got ${chunk}`);
    const one = async (part: string[]): Promise<BatchResult[]> => {
      const results: BatchResult[] = part.map((user) => ({ user }));
      let todo = part.map((_, i) => i);
      for (let attempt = 0; attempt < this.maxAttempts && todo.length > 0; attempt++) {
        if (attempt > 0) await sleep(Math.random() * Math.min(1000, 50 * 2 ** attempt));
        const asked = todo;
        const reply = await this.call("read", (c, timeoutMs) =>
          c.batchGetProfiles({ users: asked.map((i) => part[i]) }, { timeoutMs }));
        todo = [];
        reply.results.forEach((r: BatchGetProfileResult, j: number) => {
          const index = asked[j];
          results[index] = result(part[index], r);
          const error = results[index].error;
          if (error && retryable("read", error)) todo.push(index);
        });
      }
      return results;
    };
    const parts: Promise<BatchResult[]>[] = [];
    for (let i = 0; i < users.length; i += chunk) parts.push(one(users.slice(i, i + chunk)));
    return (await Promise.all(parts)).flat();
  }

  /** Every change after options.resumeToken (from now without one), once each, across reconnects. */
  watchEvents(options: WatchOptions = {}): EventWatch {
    const self = this;
    return new EventWatch(this, options, async function* (watch) {
      const messages = self.resuming(
        (c, signal) => c.watchProfileEvents(
          { resumeToken: watch.resumeToken, users: options.users ?? [], types: options.types ?? [] }, { signal }),
        () => watch.reconnects++,
        watch.closed,
      );
      for await (const message of messages) {
        watch.resumeToken = message.resumeToken;
        const event = message.event;
        if (event) {
          yield { user: event.user, type: event.type, time: event.time ? timestampDate(event.time) : new Date(0),
                  partition: event.partition, id: event.id, resumeToken: message.resumeToken };
        }
        await options.onToken?.(message.resumeToken);
      }
    });
  }
}

function result(user: string, r: BatchGetProfileResult): BatchResult {
  if (r.result.case === "profile") return { user, profile: { user: r.result.value.user, fields: { ...r.result.value.fields } } };
  const status = r.result.value;
  const details = (status?.details ?? []).map((d) => ({ type: d.typeUrl.replace(/^.*\//, ""), value: d.value }));
  return { user, error: typed((status?.code ?? Code.Unknown) as Code, status?.message ?? "", decodeDetails(details)) };
}

// ---------------------------------------------------------------- ReportingService

export interface ProfileScore { user: string; score: number }
export interface OperationTotals { create: number; read: number; update: number; delete: number }

export class ReportingClient extends Base<typeof ReportingService> {
  constructor(target: string, options: Options = {}) {
    super(ReportingService, target, options);
  }

  async top(limit: number): Promise<ProfileScore[]> {
    const reply = await this.call("read", (c, timeoutMs) => c.getTopProfiles({ limit }, { timeoutMs }));
    return reply.results.map((r) => ({ user: r.user, score: Number(r.score) }));
  }

  async stats(user: string): Promise<number> {
    const reply = await this.call("read", (c, timeoutMs) => c.getProfileStats({ user }, { timeoutMs }));
    return Number(reply.reads);
  }

  async totals(): Promise<OperationTotals> {
    const t = await this.call("read", (c, timeoutMs) => c.getOperationTotals({}, { timeoutMs }));
    return { create: Number(t.create), read: Number(t.read), update: Number(t.update), delete: Number(t.delete) };
  }

  /** The top `limit` and the totals now, then on each change; reconnects by itself. */
  async *watchTop(limit: number): AsyncGenerator<{ results: ProfileScore[]; totals: OperationTotals }> {
    for await (const m of this.resuming((c, signal) => c.watchTopProfiles({ limit }, { signal }), () => {})) {
      const t = m.totals;
      yield {
        results: m.results.map((r) => ({ user: r.user, score: Number(r.score) })),
        totals: { create: Number(t?.create ?? 0), read: Number(t?.read ?? 0), update: Number(t?.update ?? 0),
                  delete: Number(t?.delete ?? 0) },
      };
    }
  }
}
