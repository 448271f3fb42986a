/**
 * @imagegen/client: TypeScript client for the imagegen gRPC gateway.
 *
 * - {@link ImagegenClient} / {@link Conversation}: the typed wrapper.
 * - errors: {@link ImagegenError} and one subclass per meaning.
 * - The generated message types and schemas of `imagegen.v1`, for callers who
 *   want the raw protocol (`client.raw` is the generated Connect client).
 */
export * from "./client.js";
export * from "./errors.js";
export * from "./gen/imagegen/v1/error_reason_pb.js";
export * from "./gen/imagegen/v1/image_pb.js";
export * from "./gen/imagegen/v1/image_generation_service_pb.js";
