/**
 * Typed errors rebuilt from a gRPC status and its `google.rpc` details.
 *
 * The server ends every failed call with a standard gRPC status and puts a
 * serialized `google.rpc.Status` in the `grpc-status-details-bin` trailer:
 * exactly one `ErrorInfo` (domain `imagegen.dev`), plus `RetryInfo`,
 * `QuotaFailure`, `BadRequest` or `ResourceInfo` where they apply (see the
 * error table in the README). {@link toImagegenError} turns that into
 * one class per meaning, mirroring the Python SDK's exceptions:
 *
 * | class                    | gRPC code            | ErrorInfo reasons                                  |
 * |--------------------------|----------------------|----------------------------------------------------|
 * | InvalidRequestError      | INVALID_ARGUMENT     | INVALID_REQUEST, UPSTREAM_INVALID_ARGUMENT,        |
 * |                          | (also OUT_OF_RANGE)  | MISSING_THOUGHT_SIGNATURE, UNDECODABLE_REQUEST,    |
 * |                          |                      | REQUEST_TOO_LARGE                                  |
 * | ContentPolicyError       | INVALID_ARGUMENT     | CONTENT_BLOCKED                                    |
 * | NoImageError             | FAILED_PRECONDITION  | NO_IMAGE                                           |
 * | FailedPreconditionError  | FAILED_PRECONDITION  | UPSTREAM_FAILED_PRECONDITION                       |
 * | RateLimitError           | RESOURCE_EXHAUSTED   | UPSTREAM_RATE_LIMITED, OVERLOADED,                 |
 * |                          |                      | CALLER_QUOTA_EXCEEDED, MEMORY_OVERLOADED           |
 * | QuotaExhaustedError      | RESOURCE_EXHAUSTED   | UPSTREAM_QUOTA_EXHAUSTED                           |
 * | UnavailableError         | UNAVAILABLE          | UPSTREAM_UNAVAILABLE, SHUTTING_DOWN,               |
 * |                          |                      | DUPLICATE_CANCELLED, CIRCUIT_OPEN,                 |
 * |                          |                      | SHARED_STATE_UNAVAILABLE                           |
 * | DeadlineExceededError    | DEADLINE_EXCEEDED    | UPSTREAM_TIMEOUT, DEADLINE_EXCEEDED,               |
 * |                          |                      | MAX_DURATION_EXCEEDED                              |
 * | NotFoundError            | NOT_FOUND            | MODEL_NOT_FOUND                                    |
 * | AuthenticationError      | UNAUTHENTICATED      | CREDENTIALS_MISSING, CREDENTIALS_INVALID           |
 * | PermissionDeniedError    | PERMISSION_DENIED    | METHOD_NOT_ALLOWED                                 |
 * | UpstreamAuthError        | INTERNAL             | UPSTREAM_AUTH                                      |
 * | InternalError            | INTERNAL, UNKNOWN,   | UPSTREAM_MALFORMED, INTERNAL                       |
 * |                          | DATA_LOSS, others    |                                                    |
 * | UnimplementedError       | UNIMPLEMENTED        |                                                    |
 * | RequestCancelledError    | CANCELLED            |                                                    |
 *
 * The reasons are the values of the generated {@link ErrorReason} enum
 * (`protos/imagegen/v1/error_reason.proto`, documented there): the wire
 * string is the value's name, `ErrorReason[ErrorReason.CONTENT_BLOCKED]`, or
 * {@link reasonName}. The class is chosen by `ErrorInfo.reason` first (for the
 * `imagegen.dev` domain, or no domain), then by the code: the same rule and
 * the same class names as the Python SDK (`imagegen.errors`).
 *
 * All of them extend {@link ImagegenError}, so `catch (e) { if (e instanceof
 * ImagegenError) ... }` catches every failure of a call.
 */
import { fromBinary, getOption, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { anyUnpack, type Duration } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  ResourceInfoSchema,
  RetryInfoSchema,
  type BadRequest_FieldViolation,
  type ErrorInfo,
  type QuotaFailure_Violation,
  type ResourceInfo,
} from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema, type Status } from "./gen/google/rpc/status_pb.js";
import { ErrorReason, ErrorReasonSchema, error_domain } from "./gen/imagegen/v1/error_reason_pb.js";

/** The `ErrorInfo.domain` the imagegen server uses (the `error_domain` option of `ErrorReason`). */
export const ERROR_DOMAIN: string = getOption(ErrorReasonSchema, error_domain);

/**
 * The `ErrorInfo.reason` string of an {@link ErrorReason} value, e.g.
 * `reasonName(ErrorReason.CONTENT_BLOCKED) === "CONTENT_BLOCKED"` (protobuf-es
 * drops the `ERROR_REASON_` prefix from the generated names, as the wire does).
 */
export function reasonName(reason: ErrorReason): string {
  return ErrorReason[reason];
}

/** gRPC status code names, indexed by number (google.rpc.Code). */
export const STATUS_CODE_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
] as const;

/** One entry of a status's `details`: the Any's type name and its bytes. */
export interface RawDetail {
  /** Fully qualified message name, e.g. `google.rpc.ErrorInfo`. */
  type: string;
  /** The serialized message. */
  value: Uint8Array;
}

/** Everything a status carried, decoded. Input to the error constructors. */
export interface ErrorParts {
  /** Numeric gRPC status code (0-16). */
  code: number;
  /** The status message (developer-facing, English). */
  message: string;
  /** The ErrorInfo, when the server sent one (it always does). */
  errorInfo?: ErrorInfo;
  /** RetryInfo.retry_delay in milliseconds, when sent. */
  retryDelayMs?: number;
  /** BadRequest field violations (empty when none). */
  fieldViolations: BadRequest_FieldViolation[];
  /** QuotaFailure violations (empty when none). */
  quotaViolations: QuotaFailure_Violation[];
  /** ResourceInfo, when sent (NOT_FOUND). */
  resourceInfo?: ResourceInfo;
  /** All details as received, including types this client does not know. */
  details: RawDetail[];
  /** The underlying transport error. */
  cause?: unknown;
}

/** Base class of every error a call on {@link ImagegenClient} throws. */
export class ImagegenError extends Error {
  /** Numeric gRPC status code, e.g. 3 for INVALID_ARGUMENT. */
  readonly code: number;
  /** The code's name, e.g. `INVALID_ARGUMENT`. */
  readonly codeName: string;
  /** `ErrorInfo.reason`, e.g. `CONTENT_BLOCKED`; empty if the status had no ErrorInfo. */
  readonly reason: string;
  /** `ErrorInfo.domain`, normally {@link ERROR_DOMAIN}. */
  readonly domain: string;
  /** `ErrorInfo.metadata` (lowerCamel keys such as `generationId`, `attempts`). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Server-assigned generation id (`metadata.generationId`), when known. */
  readonly generationId: string | undefined;
  /** The caller's request id (`metadata.requestId`), when one was given. */
  readonly requestId: string | undefined;
  /** Upstream attempts made (`metadata.attempts`), when known. */
  readonly attempts: number | undefined;
  /** `RetryInfo.retry_delay` in seconds, when the server suggested a wait. */
  readonly retryAfter: number | undefined;
  /** The same delay in milliseconds. */
  readonly retryAfterMs: number | undefined;
  /** Every detail of the status, raw. */
  readonly details: readonly RawDetail[];

  constructor(parts: ErrorParts) {
    super(parts.message, parts.cause === undefined ? undefined : { cause: parts.cause });
    this.name = new.target.name;
    this.code = parts.code;
    this.codeName = STATUS_CODE_NAMES[parts.code] ?? `CODE_${parts.code}`;
    this.reason = parts.errorInfo?.reason ?? "";
    this.domain = parts.errorInfo?.domain ?? "";
    this.metadata = { ...(parts.errorInfo?.metadata ?? {}) };
    this.generationId = this.metadata["generationId"] || undefined;
    this.requestId = this.metadata["requestId"] || undefined;
    const attempts = Number.parseInt(this.metadata["attempts"] ?? "", 10);
    this.attempts = Number.isNaN(attempts) ? undefined : attempts;
    this.retryAfterMs = parts.retryDelayMs;
    this.retryAfter = parts.retryDelayMs === undefined ? undefined : parts.retryDelayMs / 1000;
    this.details = parts.details;
  }
}

/** The request was malformed: see {@link fieldViolations} (INVALID_ARGUMENT). */
export class InvalidRequestError extends ImagegenError {
  /** One entry per bad field, named by its proto path (`history[2].parts[1].image.data`). */
  readonly fieldViolations: readonly BadRequest_FieldViolation[];
  constructor(parts: ErrorParts) {
    super(parts);
    this.fieldViolations = parts.fieldViolations;
  }
}

/** The prompt or the output was blocked by safety filters (INVALID_ARGUMENT + CONTENT_BLOCKED). */
export class ContentPolicyError extends ImagegenError {
  /** `prompt` or `output`. */
  readonly blockSide: string;
  /** Gemini's block reason, e.g. `SAFETY`, when the prompt was blocked. */
  readonly blockReason: string;
  /** Gemini's finish reason, e.g. `IMAGE_SAFETY`, when the output was blocked. */
  readonly finishReason: string;
  constructor(parts: ErrorParts) {
    super(parts);
    this.blockSide = this.metadata["blockSide"] ?? "";
    this.blockReason = this.metadata["blockReason"] ?? "";
    this.finishReason = this.metadata["finishReason"] ?? "";
  }
}

/**
 * Rate limited, upstream or by the server's own concurrency limit
 * (RESOURCE_EXHAUSTED). {@link retryAfter} (seconds) says how long to wait.
 */
export class RateLimitError extends ImagegenError {
  /** QuotaFailure violations, when sent. */
  readonly quotaViolations: readonly QuotaFailure_Violation[];
  constructor(parts: ErrorParts) {
    super(parts);
    this.quotaViolations = parts.quotaViolations;
  }
}

/** The upstream per-day quota is spent; retrying soon will not help (UPSTREAM_QUOTA_EXHAUSTED). */
export class QuotaExhaustedError extends RateLimitError {}

/** The operation was rejected in the current state (FAILED_PRECONDITION). */
export class FailedPreconditionError extends ImagegenError {}

/** The model answered without an image, even after a retry (FAILED_PRECONDITION + NO_IMAGE). */
export class NoImageError extends ImagegenError {
  /** Gemini's finish reason (`metadata.finishReason`). */
  readonly finishReason: string;
  /** Any text the model returned instead (`metadata.modelText`). */
  readonly modelText: string;
  constructor(parts: ErrorParts) {
    super(parts);
    this.finishReason = this.metadata["finishReason"] ?? "";
    this.modelText = this.metadata["modelText"] ?? "";
  }
}

/** The upstream or the server is unavailable or shutting down; safe to retry (UNAVAILABLE). */
export class UnavailableError extends ImagegenError {}

/** The caller's deadline or the upstream timeout expired (DEADLINE_EXCEEDED). */
export class DeadlineExceededError extends ImagegenError {}

/** The model (or another resource) does not exist (NOT_FOUND + MODEL_NOT_FOUND). */
export class NotFoundError extends ImagegenError {
  /** ResourceInfo, when sent. */
  readonly resourceInfo: ResourceInfo | undefined;
  /** The missing resource's name (ResourceInfo, else `metadata.model`). */
  readonly resourceName: string | undefined;
  constructor(parts: ErrorParts) {
    super(parts);
    this.resourceInfo = parts.resourceInfo;
    this.resourceName = parts.resourceInfo?.resourceName || this.metadata["model"] || undefined;
  }
}

/** The caller is not authenticated (UNAUTHENTICATED). */
export class AuthenticationError extends ImagegenError {}

/** The caller may not do this (PERMISSION_DENIED). */
export class PermissionDeniedError extends ImagegenError {}

/** The call was cancelled, normally by the caller's AbortSignal (CANCELLED). */
export class RequestCancelledError extends ImagegenError {}

/** The server failed unexpectedly, or the upstream misbehaved (INTERNAL, UNKNOWN, DATA_LOSS, others). */
export class InternalError extends ImagegenError {}

/** The server's own Gemini API key is missing or invalid (UPSTREAM_AUTH): an operator problem. */
export class UpstreamAuthError extends InternalError {}

/** The server does not implement this method (UNIMPLEMENTED). */
export class UnimplementedError extends ImagegenError {}

/** The seed SDK's name for the base class, as in the Python SDK. */
export const GenerationError = ImagegenError;
/** The seed SDK's name for {@link ContentPolicyError}, as in the Python SDK. */
export const ContentBlockedError = ContentPolicyError;

type ErrorClass = new (parts: ErrorParts) => ImagegenError;

/**
 * ErrorReason -> class. `Record<Exclude<...>>` makes tsc fail when a value is
 * added to the enum without a class here.
 */
const CLASS_BY_REASON: Readonly<Record<Exclude<ErrorReason, ErrorReason.UNSPECIFIED>, ErrorClass>> = {
  [ErrorReason.INVALID_REQUEST]: InvalidRequestError,
  [ErrorReason.UPSTREAM_INVALID_ARGUMENT]: InvalidRequestError,
  [ErrorReason.MISSING_THOUGHT_SIGNATURE]: InvalidRequestError,
  [ErrorReason.UNDECODABLE_REQUEST]: InvalidRequestError,
  [ErrorReason.REQUEST_TOO_LARGE]: InvalidRequestError,
  [ErrorReason.UPSTREAM_FAILED_PRECONDITION]: FailedPreconditionError,
  [ErrorReason.CONTENT_BLOCKED]: ContentPolicyError,
  [ErrorReason.NO_IMAGE]: NoImageError,
  [ErrorReason.UPSTREAM_RATE_LIMITED]: RateLimitError,
  [ErrorReason.OVERLOADED]: RateLimitError,
  [ErrorReason.CALLER_QUOTA_EXCEEDED]: RateLimitError,
  [ErrorReason.MEMORY_OVERLOADED]: RateLimitError,
  [ErrorReason.UPSTREAM_QUOTA_EXHAUSTED]: QuotaExhaustedError,
  [ErrorReason.UPSTREAM_UNAVAILABLE]: UnavailableError,
  [ErrorReason.SHUTTING_DOWN]: UnavailableError,
  [ErrorReason.DUPLICATE_CANCELLED]: UnavailableError,
  [ErrorReason.CIRCUIT_OPEN]: UnavailableError,
  [ErrorReason.SHARED_STATE_UNAVAILABLE]: UnavailableError,
  [ErrorReason.UPSTREAM_TIMEOUT]: DeadlineExceededError,
  [ErrorReason.DEADLINE_EXCEEDED]: DeadlineExceededError,
  [ErrorReason.MAX_DURATION_EXCEEDED]: DeadlineExceededError,
  [ErrorReason.MODEL_NOT_FOUND]: NotFoundError,
  [ErrorReason.CREDENTIALS_MISSING]: AuthenticationError,
  [ErrorReason.CREDENTIALS_INVALID]: AuthenticationError,
  [ErrorReason.METHOD_NOT_ALLOWED]: PermissionDeniedError,
  [ErrorReason.UPSTREAM_AUTH]: UpstreamAuthError,
  [ErrorReason.UPSTREAM_MALFORMED]: InternalError,
  [ErrorReason.INTERNAL]: InternalError,
};

/** ErrorInfo.reason (wire string) -> class (for the imagegen.dev domain, or no domain). */
const BY_REASON: ReadonlyMap<string, ErrorClass> = new Map(
  Object.entries(CLASS_BY_REASON).map(([value, cls]) => [reasonName(Number(value) as ErrorReason), cls]),
);

/** gRPC code -> class, when the reason is unknown or absent. */
const BY_CODE: Readonly<Partial<Record<Code, ErrorClass>>> = {
  [Code.InvalidArgument]: InvalidRequestError,
  [Code.OutOfRange]: InvalidRequestError,
  [Code.FailedPrecondition]: FailedPreconditionError,
  [Code.ResourceExhausted]: RateLimitError,
  [Code.Unavailable]: UnavailableError,
  [Code.DeadlineExceeded]: DeadlineExceededError,
  [Code.NotFound]: NotFoundError,
  [Code.Unauthenticated]: AuthenticationError,
  [Code.PermissionDenied]: PermissionDeniedError,
  [Code.Internal]: InternalError,
  [Code.Unknown]: InternalError,
  [Code.DataLoss]: InternalError,
  [Code.Unimplemented]: UnimplementedError,
  [Code.Canceled]: RequestCancelledError,
};

function durationToMs(d: Duration | undefined): number | undefined {
  if (d === undefined) return undefined;
  return Number(d.seconds) * 1000 + d.nanos / 1e6;
}

function unpackAll<Desc extends DescMessage>(details: readonly RawDetail[], desc: Desc): MessageShape<Desc>[] {
  const out: MessageShape<Desc>[] = [];
  for (const d of details) {
    if (d.type === desc.typeName) {
      out.push(fromBinary(desc, d.value));
    }
  }
  return out;
}

/** Collects the typed details out of a status's raw details. */
export function errorPartsFrom(
  code: number,
  message: string,
  details: readonly RawDetail[],
  cause?: unknown,
): ErrorParts {
  const retry = unpackAll(details, RetryInfoSchema)[0];
  return {
    code,
    message,
    errorInfo: unpackAll(details, ErrorInfoSchema)[0],
    retryDelayMs: durationToMs(retry?.retryDelay),
    fieldViolations: unpackAll(details, BadRequestSchema).flatMap((b) => b.fieldViolations),
    quotaViolations: unpackAll(details, QuotaFailureSchema).flatMap((q) => q.violations),
    resourceInfo: unpackAll(details, ResourceInfoSchema)[0],
    details: [...details],
    cause,
  };
}

/** Picks the error class for a status: by ErrorInfo.reason first, then by code. */
export function errorFromParts(parts: ErrorParts): ImagegenError {
  const info = parts.errorInfo;
  const ours = info !== undefined && (info.domain === ERROR_DOMAIN || info.domain === "");
  const cls = (ours ? BY_REASON.get(info.reason) : undefined) ?? BY_CODE[parts.code as Code] ?? InternalError;
  return new cls(parts);
}

/**
 * Decodes a `grpc-status-details-bin` value: base64 (padded or not, as gRPC
 * allows) of a serialized `google.rpc.Status`.
 */
export function decodeStatusDetailsBin(value: string): Status {
  return fromBinary(StatusSchema, Buffer.from(value, "base64"));
}

/** The raw details of a decoded `google.rpc.Status`. */
export function rawDetailsOf(status: Status): RawDetail[] {
  return status.details.map((any) => ({
    type: any.typeUrl.substring(any.typeUrl.lastIndexOf("/") + 1),
    value: any.value,
  }));
}

/** Unpacks one message type from a `google.rpc.Status`'s details (first match). */
export function findStatusDetail<Desc extends DescMessage>(status: Status, desc: Desc): MessageShape<Desc> | undefined {
  for (const any of status.details) {
    const msg = anyUnpack(any, desc);
    if (msg !== undefined) return msg;
  }
  return undefined;
}

/**
 * Turns anything a call threw into an {@link ImagegenError}. A ConnectError
 * (what the gRPC transport throws) keeps its code, message and details; when
 * the transport did not decode the details itself, the raw
 * `grpc-status-details-bin` trailer is decoded here. Anything else becomes an
 * {@link InternalError} (or a {@link CancelledError} for an abort).
 */
export function toImagegenError(err: unknown): ImagegenError {
  if (err instanceof ImagegenError) return err;
  const ce = ConnectError.from(err);
  let details: RawDetail[] = ce.details.flatMap((d) =>
    "type" in d ? [{ type: d.type, value: d.value }] : [],
  );
  let message = ce.rawMessage;
  if (details.length === 0) {
    const bin = ce.metadata.get("grpc-status-details-bin");
    if (bin !== null) {
      try {
        const status = decodeStatusDetailsBin(bin);
        details = rawDetailsOf(status);
        if (message === "") message = status.message;
      } catch {
        // A malformed trailer: keep the code and message we have.
      }
    }
  }
  return errorFromParts(errorPartsFrom(ce.code, message, details, err));
}
