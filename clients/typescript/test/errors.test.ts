// Unit tests (no server): status details -> typed errors.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack, DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "../src/gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../src/gen/google/rpc/status_pb.js";
import {
  AuthenticationError,
  RequestCancelledError,
  UnimplementedError,
  UpstreamAuthError,
  ContentBlockedError,
  ContentPolicyError,
  DeadlineExceededError,
  decodeStatusDetailsBin,
  ERROR_DOMAIN,
  FailedPreconditionError,
  ImagegenError,
  InternalError,
  InvalidRequestError,
  NoImageError,
  NotFoundError,
  PermissionDeniedError,
  QuotaExhaustedError,
  RateLimitError,
  reasonName,
  toImagegenError,
  UnavailableError,
} from "../src/errors.js";
import { ErrorReason, ErrorReasonSchema } from "../src/gen/imagegen/v1/error_reason_pb.js";

function errorInfo(reason: string, metadata: Record<string, string> = {}) {
  return anyPack(ErrorInfoSchema, create(ErrorInfoSchema, { reason, domain: ERROR_DOMAIN, metadata }));
}

/** A ConnectError as the gRPC transport builds it from a trailer, details left raw. */
function trailerError(code: Code, message: string, details: ReturnType<typeof errorInfo>[]): ConnectError {
  const status = create(StatusSchema, { code, message, details });
  const bin = Buffer.from(toBinary(StatusSchema, status)).toString("base64").replace(/=+$/, "");
  return new ConnectError(message, code, { "grpc-status-details-bin": bin });
}

describe("toImagegenError", () => {
  it("decodes grpc-status-details-bin (unpadded base64) into RateLimitError with retryAfter", () => {
    const err = toImagegenError(
      trailerError(Code.ResourceExhausted, "rate limited", [
        errorInfo("UPSTREAM_RATE_LIMITED", { generationId: "g-1", attempts: "3", requestId: "r-9" }),
        anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: create(DurationSchema, { seconds: 1n, nanos: 500_000_000 }) })),
        anyPack(
          QuotaFailureSchema,
          create(QuotaFailureSchema, { violations: [{ subject: "project", description: "rpm" }] }),
        ),
      ]),
    );
    assert.ok(err instanceof RateLimitError);
    assert.ok(err instanceof ImagegenError);
    assert.equal(err.code, 8);
    assert.equal(err.codeName, "RESOURCE_EXHAUSTED");
    assert.equal(err.reason, "UPSTREAM_RATE_LIMITED");
    assert.equal(err.domain, "imagegen.dev");
    assert.equal(err.message, "rate limited");
    assert.equal(err.retryAfter, 1.5);
    assert.equal(err.retryAfterMs, 1500);
    assert.equal(err.generationId, "g-1");
    assert.equal(err.requestId, "r-9");
    assert.equal(err.attempts, 3);
    assert.equal(err.quotaViolations[0]?.description, "rpm");
    assert.equal(err.name, "RateLimitError");
  });

  it("uses details the transport already decoded", () => {
    const info = create(ErrorInfoSchema, {
      reason: "CONTENT_BLOCKED",
      domain: ERROR_DOMAIN,
      metadata: { blockSide: "output", blockReason: "", finishReason: "IMAGE_SAFETY" },
    });
    const ce = new ConnectError("output blocked", Code.InvalidArgument);
    ce.details = [{ type: "google.rpc.ErrorInfo", value: toBinary(ErrorInfoSchema, info) }];
    const err = toImagegenError(ce);
    assert.ok(err instanceof ContentPolicyError);
    assert.ok(err instanceof ContentBlockedError);
    assert.ok(!(err instanceof InvalidRequestError));
    assert.equal(err.blockSide, "output");
    assert.equal(err.finishReason, "IMAGE_SAFETY");
  });

  it("keeps BadRequest field violations", () => {
    const err = toImagegenError(
      trailerError(Code.InvalidArgument, "bad", [
        errorInfo("INVALID_REQUEST"),
        anyPack(
          BadRequestSchema,
          create(BadRequestSchema, { fieldViolations: [{ field: "prompt", description: "required" }] }),
        ),
      ]),
    );
    assert.ok(err instanceof InvalidRequestError);
    assert.ok(!(err instanceof ContentPolicyError));
    assert.deepEqual(
      err.fieldViolations.map((v) => [v.field, v.description]),
      [["prompt", "required"]],
    );
  });

  it("maps each code (and reason) to its class", () => {
    const cases: [Code, string, new (...a: never[]) => ImagegenError][] = [
      [Code.ResourceExhausted, "UPSTREAM_QUOTA_EXHAUSTED", QuotaExhaustedError],
      [Code.ResourceExhausted, "OVERLOADED", RateLimitError],
      [Code.FailedPrecondition, "NO_IMAGE", NoImageError],
      [Code.FailedPrecondition, "UPSTREAM_FAILED_PRECONDITION", FailedPreconditionError],
      [Code.Unavailable, "UPSTREAM_UNAVAILABLE", UnavailableError],
      [Code.DeadlineExceeded, "DEADLINE_EXCEEDED", DeadlineExceededError],
      [Code.NotFound, "MODEL_NOT_FOUND", NotFoundError],
      [Code.Unauthenticated, "", AuthenticationError],
      [Code.PermissionDenied, "", PermissionDeniedError],
      [Code.Canceled, "", RequestCancelledError],
      [Code.Unimplemented, "", UnimplementedError],
      [Code.Internal, "UPSTREAM_AUTH", UpstreamAuthError],
      [Code.Internal, "UPSTREAM_MALFORMED", InternalError],
      [Code.InvalidArgument, "MISSING_THOUGHT_SIGNATURE", InvalidRequestError],
      [Code.Unavailable, "SHUTTING_DOWN", UnavailableError],
      [Code.DataLoss, "", InternalError],
      [Code.Unknown, "", InternalError],
    ];
    for (const [code, reason, cls] of cases) {
      const err = toImagegenError(trailerError(code, "x", reason ? [errorInfo(reason)] : []));
      assert.ok(err instanceof cls, `${Code[code]}/${reason} -> ${err.name}`);
      assert.equal(err.code, code);
      assert.equal(err.reason, reason);
    }
  });

  it("ignores reasons of another domain and falls back to the code", () => {
    const info = anyPack(ErrorInfoSchema, create(ErrorInfoSchema, { reason: "CONTENT_BLOCKED", domain: "googleapis.com" }));
    const err = toImagegenError(trailerError(Code.InvalidArgument, "x", [info]));
    assert.ok(err instanceof InvalidRequestError);
    assert.equal(err.reason, "CONTENT_BLOCKED");
  });

  it("turns a status without details and a non-gRPC error into typed errors", () => {
    const bare = toImagegenError(new ConnectError("gone", Code.Unavailable));
    assert.ok(bare instanceof UnavailableError);
    assert.equal(bare.reason, "");
    assert.equal(bare.retryAfter, undefined);
    const other = toImagegenError(new TypeError("boom"));
    assert.ok(other instanceof ImagegenError);
    assert.equal(other.cause instanceof TypeError, true);
  });

  it("decodeStatusDetailsBin round-trips a google.rpc.Status", () => {
    const status = create(StatusSchema, { code: 5, message: "no such model", details: [errorInfo("MODEL_NOT_FOUND")] });
    const decoded = decodeStatusDetailsBin(Buffer.from(toBinary(StatusSchema, status)).toString("base64"));
    assert.equal(decoded.code, 5);
    assert.equal(decoded.message, "no such model");
    assert.equal(decoded.details[0]?.typeUrl, "type.googleapis.com/google.rpc.ErrorInfo");
  });

  it("derives the domain and every reason from the ErrorReason enum", () => {
    assert.equal(ERROR_DOMAIN, "imagegen.dev");
    assert.equal(reasonName(ErrorReason.UPSTREAM_RATE_LIMITED), "UPSTREAM_RATE_LIMITED");
    for (const value of ErrorReasonSchema.values) {
      if (value.number === ErrorReason.UNSPECIFIED) continue;
      const wire = value.name.replace(/^ERROR_REASON_/, "");
      assert.equal(reasonName(value.number as ErrorReason), wire);
      // A known reason picks its class even under a code that maps to none (ALREADY_EXISTS).
      const err = toImagegenError(trailerError(Code.AlreadyExists, "x", [errorInfo(wire)]));
      assert.equal(err.reason, wire);
      const internal = wire === "INTERNAL" || wire === "UPSTREAM_MALFORMED";
      assert.equal(err.constructor === InternalError, internal, `${wire} -> ${err.name}`);
    }
  });
});
