/**
 * ImagegenClient: a thin typed wrapper over the generated
 * `imagegen.v1.ImageGenerationService` client, speaking gRPC (HTTP/2) through
 * Connect's Node transport.
 *
 * - Same methods as the Python SDK: generate, refine, generateStream and
 *   refineStream (async iterators of progress events), listModels.
 * - Keyword-style parameters matching the proto fields (camelCase).
 * - A deadline per call (`timeoutMs`, sent as `grpc-timeout`) and a default per
 *   client; an AbortSignal to cancel.
 * - Every failure is thrown as an {@link ImagegenError} subclass rebuilt from
 *   the status and its `grpc-status-details-bin` details (see errors.ts).
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  GenerationOptionsSchema,
  ImageGenerationService,
  type Accepted,
  type AttemptFailed,
  type AttemptStarted,
  type GenerationOptions,
  type Heartbeat,
  type ModelFallback,
  type Preview,
} from "./gen/imagegen/v1/image_generation_service_pb.js";
import {
  ImageSchema,
  Role,
  TurnSchema,
  type Generation,
  type Image,
  type ModelInfo,
  type Turn,
} from "./gen/imagegen/v1/image_pb.js";
import { toImagegenError } from "./errors.js";

/** An input image: its bytes, and optionally its media type (else the server sniffs it). */
export interface ImageInput {
  /** PNG, JPEG, WebP, HEIC or HEIF bytes. */
  data: Uint8Array;
  /** e.g. `image/png`; may be omitted. */
  mimeType?: string;
}

/** Options shared by every generation request (imagegen.v1.GenerationOptions). */
export interface GenerationParams {
  /** Model id; empty or absent means the server's default (see listModels). */
  model?: string;
  /** Desired width in pixels, mapped with `height` to the nearest ratio and tier. */
  width?: number;
  /** Desired height in pixels. */
  height?: number;
  /** Explicit aspect ratio such as `16:9`. */
  aspectRatio?: string;
  /** Explicit size tier: `512`, `1K`, `2K` or `4K`. */
  imageSize?: string;
  /** Seed for the upstream model (0 is valid); absent lets the server pick. */
  seed?: number;
  /** Idempotency key: repeats within the server's TTL get the same result. */
  requestId?: string;
  /** True: the requested model or an error, never one of the server's fallback models. */
  disableModelFallback?: boolean;
}

/** Parameters of {@link ImagegenClient.generate}. */
export interface GenerateParams extends GenerationParams {
  /** What to draw. */
  prompt: string;
  /** Optional reference images. */
  inputImages?: ImageInput[];
}

/** A turn of history: a generated `Turn` message or a plain object of the same shape. */
export type TurnInit = MessageInitShape<typeof TurnSchema>;

/** Parameters of {@link ImagegenClient.refine}. */
export interface RefineParams extends GenerationParams {
  /** The edit to make, e.g. "make it night". */
  prompt: string;
  /**
   * The conversation so far, oldest first: the user turns you sent and each
   * `generation.modelTurn` exactly as returned (its thought signatures must
   * come back byte for byte). {@link userTurn} builds a user turn. Turns from
   * this client carry their image bytes; a turn from `client.raw` does not,
   * so pass its generation's image in {@link historyImages}.
   */
  history: TurnInit[];
  /** Optional extra images for this turn. */
  inputImages?: ImageInput[];
  /**
   * `Generation.image` of each generation whose raw `modelTurn` is in the
   * history, keyed by `generationId` (see `RefineRequest.history_images`).
   */
  historyImages?: { [generationId: string]: MessageInitShape<typeof ImageSchema> };
}

/** Per-call options. */
export interface CallOptions {
  /** Deadline for this call in milliseconds (overrides the client's default). */
  timeoutMs?: number;
  /** Cancels the call when aborted (the server then aborts its upstream request). */
  signal?: AbortSignal;
  /** Extra request metadata (gRPC headers), e.g. `authorization`. */
  headers?: HeadersInit;
}

/** Options of {@link ImagegenClient}. */
export interface ImagegenClientOptions {
  /**
   * Where the server listens: `http://host:port` for plaintext HTTP/2 (h2c),
   * `https://host:port` for TLS. A bare `host:port` means `http://host:port`,
   * or `https://host:port` when `ca`, `cert` or `key` is given.
   */
  address: string;
  /** Default deadline for every call, in milliseconds. None when absent. */
  timeoutMs?: number;
  /** Metadata sent with every call, e.g. `{ "x-request-id": "..." }`. */
  headers?: HeadersInit;
  /** Sent as `authorization: Bearer <token>` on every call (the server's tokens file names the caller). */
  bearerToken?: string;
  /**
   * TLS (`https://` addresses): the CA certificate(s) that signed the server's
   * certificate, PEM; absent trusts Node's default roots.
   */
  ca?: string | Buffer;
  /** Mutual TLS: this client's certificate chain, PEM (with `key`). */
  cert?: string | Buffer;
  /** Mutual TLS: the private key of `cert`, PEM. */
  key?: string | Buffer;
  /** Use this transport instead of creating a gRPC one (address and TLS options are then ignored). */
  transport?: Transport;
}

/**
 * One progress event of a stream: a discriminated union on `case`
 * (`accepted`, `attemptStarted`, `attemptFailed`, `heartbeat`, `preview`,
 * `modelFallback`, `completed`). The last event of a successful stream is
 * `completed`; a failed stream throws an {@link ImagegenError} instead.
 * Events added to the protocol later are skipped, so switch with a default.
 */
export type StreamEvent =
  | { case: "accepted"; value: Accepted }
  | { case: "attemptStarted"; value: AttemptStarted }
  | { case: "attemptFailed"; value: AttemptFailed }
  | { case: "heartbeat"; value: Heartbeat }
  | { case: "preview"; value: Preview }
  | { case: "modelFallback"; value: ModelFallback }
  | { case: "completed"; value: Generation };

/** Builds a user turn (prompt text, then any images) for a Refine history. */
export function userTurn(prompt: string, inputImages: ImageInput[] = []): Turn {
  return create(TurnSchema, {
    role: Role.USER,
    parts: [
      { data: { case: "text", value: prompt } },
      ...inputImages.map((img) => ({ data: { case: "image" as const, value: toImage(img) } })),
    ],
  });
}

function toImage(img: ImageInput): Image {
  return create(ImageSchema, { data: img.data, mimeType: img.mimeType ?? "" });
}

function toOptions(p: GenerationParams): GenerationOptions {
  return create(GenerationOptionsSchema, {
    model: p.model ?? "",
    width: p.width ?? 0,
    height: p.height ?? 0,
    aspectRatio: p.aspectRatio ?? "",
    imageSize: p.imageSize ?? "",
    seed: p.seed,
    requestId: p.requestId ?? "",
    disableModelFallback: p.disableModelFallback ?? false,
  });
}

function normalizeAddress(address: string, tls: boolean): string {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(address)) return address;
  return `${tls ? "https" : "http"}://${address}`;
}

/** The client's default headers plus `authorization: Bearer <token>` when a token is given. */
function withBearer(headers: HeadersInit | undefined, token: string | undefined): HeadersInit | undefined {
  if (token === undefined) return headers;
  const merged = new Headers(headers);
  merged.set("authorization", `Bearer ${token}`);
  return merged;
}

/** The call options this wrapper passes to the generated Connect client. */
interface ConnectCallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  headers?: HeadersInit;
}

/** Drops events of kinds this client does not know (sent by a newer server). */
function knownEvent(event: { case: string | undefined; value?: unknown }): StreamEvent | undefined {
  if (event.case === undefined) return undefined;
  const ev = event as StreamEvent;
  if (ev.case === "completed") completeModelTurn(ev.value);
  return ev;
}

/**
 * Puts the final image's bytes back into `generation.modelTurn`. The server
 * sends them once, in `generation.image.data`; the model turn's part for that
 * image carries only its mime type and size. After this the turn can go into
 * a Refine history as is. Idempotent; the bytes are shared, not copied.
 */
export function completeModelTurn(generation: Generation): Generation {
  const data = generation.image?.data;
  for (const part of generation.modelTurn?.parts ?? []) {
    if (data !== undefined && part.data.case === "image" && !part.thought && part.data.value.data.length === 0) {
      part.data.value.data = data;
    }
  }
  return generation;
}

/**
 * Client for the imagegen gRPC gateway.
 *
 * ```ts
 * const client = new ImagegenClient({ address: "127.0.0.1:50051", timeoutMs: 120_000 });
 * const gen = await client.generate({ prompt: "a red fox in snow", aspectRatio: "16:9" });
 * await writeFile("fox.png", gen.image!.data);
 * client.close();
 * ```
 */
export class ImagegenClient {
  /** The generated Connect client, for callers who want the raw messages. */
  readonly raw: Client<typeof ImageGenerationService>;
  private readonly timeoutMs: number | undefined;
  private readonly headers: HeadersInit | undefined;
  private readonly sessionManager: Http2SessionManager | undefined;

  constructor(options: ImagegenClientOptions) {
    this.timeoutMs = options.timeoutMs;
    this.headers = withBearer(options.headers, options.bearerToken);
    let transport = options.transport;
    if (transport === undefined) {
      const tls = options.ca !== undefined || options.cert !== undefined || options.key !== undefined;
      if ((options.cert === undefined) !== (options.key === undefined)) {
        throw new TypeError("cert and key go together: give both or neither");
      }
      const baseUrl = normalizeAddress(options.address, tls);
      const secure = tls ? { ca: options.ca, cert: options.cert, key: options.key } : {};
      this.sessionManager = new Http2SessionManager(baseUrl, undefined, secure);
      transport = createGrpcTransport({ baseUrl, sessionManager: this.sessionManager });
    }
    this.raw = createClient(ImageGenerationService, transport);
  }

  /** Generates one image from a prompt and optional input images. */
  async generate(params: GenerateParams, options: CallOptions = {}): Promise<Generation> {
    try {
      const res = await this.raw.generate(
        { prompt: params.prompt, inputImages: (params.inputImages ?? []).map(toImage), options: toOptions(params) },
        this.callOptions(options),
      );
      return this.requireGeneration(res.generation);
    } catch (err) {
      throw toImagegenError(err);
    }
  }

  /** Edits an image: a new prompt plus the conversation so far. */
  async refine(params: RefineParams, options: CallOptions = {}): Promise<Generation> {
    try {
      const res = await this.raw.refine(
        {
          prompt: params.prompt,
          history: params.history,
          historyImages: params.historyImages ?? {},
          inputImages: (params.inputImages ?? []).map(toImage),
          options: toOptions(params),
        },
        this.callOptions(options),
      );
      return this.requireGeneration(res.generation);
    } catch (err) {
      throw toImagegenError(err);
    }
  }

  /**
   * Like {@link generate}, streaming progress events. Breaking out of the
   * loop (or aborting `options.signal`) cancels the call on the server.
   *
   * ```ts
   * for await (const ev of client.generateStream({ prompt: "a fox" })) {
   *   if (ev.case === "attemptFailed") console.log("retry in", ev.value.retryDelay);
   *   if (ev.case === "completed") image = ev.value.image;
   * }
   * ```
   */
  async *generateStream(params: GenerateParams, options: CallOptions = {}): AsyncGenerator<StreamEvent, void, undefined> {
    yield* this.stream(options, (callOptions) =>
      this.raw.generateStream(
        { prompt: params.prompt, inputImages: (params.inputImages ?? []).map(toImage), options: toOptions(params) },
        callOptions,
      ),
    );
  }

  /** Like {@link refine}, streaming the same progress events as {@link generateStream}. */
  async *refineStream(params: RefineParams, options: CallOptions = {}): AsyncGenerator<StreamEvent, void, undefined> {
    yield* this.stream(options, (callOptions) =>
      this.raw.refineStream(
        {
          prompt: params.prompt,
          history: params.history,
          historyImages: params.historyImages ?? {},
          inputImages: (params.inputImages ?? []).map(toImage),
          options: toOptions(params),
        },
        callOptions,
      ),
    );
  }

  /**
   * Runs a server stream: yields the known events, turns failures into
   * ImagegenErrors, and cancels the call when the consumer stops early
   * (`break`, `return`, or an exception in the loop body). Connect's stream
   * iterator has no `return()`, so without this an abandoned stream would stay
   * open on the server, and its deadline timer would keep Node alive.
   */
  private async *stream(
    options: CallOptions,
    start: (callOptions: ConnectCallOptions) => AsyncIterable<{ event: { case: string | undefined; value?: unknown } }>,
  ): AsyncGenerator<StreamEvent, void, undefined> {
    const controller = new AbortController();
    const onAbort = (): void => controller.abort(options.signal?.reason);
    if (options.signal?.aborted) onAbort();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    let it: AsyncIterator<{ event: { case: string | undefined; value?: unknown } }> | undefined;
    let finished = false;
    try {
      it = start({ ...this.callOptions(options), signal: controller.signal })[Symbol.asyncIterator]();
      for (;;) {
        const r = await it.next();
        if (r.done === true) break;
        const ev = knownEvent(r.value.event);
        if (ev !== undefined) yield ev;
      }
      finished = true;
    } catch (err) {
      finished = true;
      throw toImagegenError(err);
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
      if (!finished) {
        // RST_STREAM(CANCEL): the server sees CANCELLED and aborts its upstream call.
        controller.abort();
        // One more read lets Connect settle the aborted call and clear its deadline timer.
        await it?.next().catch(() => undefined);
      }
    }
  }

  /** Lists the models the server accepts and what each supports. */
  async listModels(options: CallOptions = {}): Promise<ModelInfo[]> {
    try {
      const res = await this.raw.listModels({}, this.callOptions(options));
      return res.models;
    } catch (err) {
      throw toImagegenError(err);
    }
  }

  /** Closes the HTTP/2 connection; calls in flight are aborted. */
  close(): void {
    this.sessionManager?.abort();
  }

  /** `using client = new ImagegenClient(...)` closes it at the end of the scope. */
  [Symbol.dispose](): void {
    this.close();
  }

  private callOptions(options: CallOptions): ConnectCallOptions {
    const headers = new Headers(this.headers);
    new Headers(options.headers).forEach((value, key) => headers.set(key, value));
    return {
      timeoutMs: options.timeoutMs ?? this.timeoutMs,
      signal: options.signal,
      headers,
    };
  }

  private requireGeneration(generation: Generation | undefined): Generation {
    if (generation === undefined) {
      // A server bug, not a caller error: surface it like any INTERNAL status.
      throw toImagegenError(new Error("server returned a response without a generation"));
    }
    return completeModelTurn(generation);
  }
}

/**
 * A multi-turn editing session: keeps the history (user turns and the model
 * turns with their thought signatures) so callers never handle signatures.
 *
 * ```ts
 * const conv = new Conversation(client, { model: "gemini-3.1-flash-image" });
 * await conv.generate("a lighthouse at dusk");
 * const night = await conv.refine("make it night");
 * ```
 */
export class Conversation {
  /** The history so far, oldest first: what the next refine sends. */
  readonly history: Turn[] = [];
  /** The latest result. */
  last: Generation | undefined;

  constructor(
    private readonly client: ImagegenClient,
    private readonly defaults: GenerationParams = {},
  ) {}

  /** Starts (or restarts) the conversation with a fresh generation. */
  async generate(prompt: string, inputImages: ImageInput[] = [], options: CallOptions = {}): Promise<Generation> {
    const gen = await this.client.generate({ ...this.defaults, prompt, inputImages }, options);
    this.history.length = 0;
    this.push(prompt, inputImages, gen);
    return gen;
  }

  /** Edits the latest image; on success the turn is added to the history. */
  async refine(prompt: string, inputImages: ImageInput[] = [], options: CallOptions = {}): Promise<Generation> {
    const gen = await this.client.refine({ ...this.defaults, prompt, history: this.history, inputImages }, options);
    this.push(prompt, inputImages, gen);
    return gen;
  }

  private push(prompt: string, inputImages: ImageInput[], gen: Generation): void {
    const modelTurn = gen.modelTurn ?? create(TurnSchema, { role: Role.MODEL, parts: [] });
    this.history.push(userTurn(prompt, inputImages), modelTurn);
    this.last = gen;
  }
}
