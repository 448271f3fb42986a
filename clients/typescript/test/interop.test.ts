// Interop tests: this TypeScript client against the real Python server, which
// talks to the Gemini emulator. .ci/ts-interop.sh starts both and sets
//   IMAGEGEN_ADDRESS       host:port of the gRPC server
//   IMAGEGEN_EMULATOR_URL  http://host:port of the emulator (scenario scripting)
// Without them the suite is skipped (the unit tests still run).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { clone } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import {
  ContentPolicyError,
  Conversation,
  ImagegenClient,
  ImagegenError,
  InvalidRequestError,
  RequestCancelledError,
  Role,
  TurnSchema,
  userTurn,
  completeModelTurn,
  type Generation,
  type StreamEvent,
  type Turn,
} from "../src/index.js";

const ADDRESS = process.env["IMAGEGEN_ADDRESS"];
const EMULATOR = process.env["IMAGEGEN_EMULATOR_URL"];
const skip = ADDRESS && EMULATOR ? false : "IMAGEGEN_ADDRESS / IMAGEGEN_EMULATOR_URL not set (run .ci/ts-interop.sh)";

/** The model that enforces thought signatures in Refine histories. */
const SIGNING_MODEL = "gemini-3.1-flash-image";

/** Registers an emulator scenario and returns the marker to put in a prompt. */
async function scenario(steps: string[]): Promise<string> {
  return (await scenarioWithId(steps)).marker;
}

async function scenarioWithId(steps: string[]): Promise<{ id: string; marker: string }> {
  const res = await fetch(`${EMULATOR}/emulator/scenarios`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ steps }),
  });
  assert.equal(res.status, 200, `scenario registration failed: ${await res.clone().text()}`);
  const body = (await res.json()) as { id: string; marker: string };
  assert.ok(body.marker, "scenario has a marker");
  return body;
}

interface ScenarioStats {
  received: number;
  completed: number;
  aborted: number;
  inFlight: number;
}

/** Polls the emulator until the scenario's stats satisfy `ok` (5 s max). */
async function waitForStats(id: string, ok: (s: ScenarioStats) => boolean): Promise<ScenarioStats> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const stats = (await (await fetch(`${EMULATOR}/emulator/scenarios/${id}?bodies=0`)).json()) as ScenarioStats;
    if (ok(stats)) return stats;
    if (Date.now() > deadline) assert.fail(`emulator stats never matched: ${JSON.stringify(stats)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** Asserts PNG bytes and returns the size from the IHDR chunk. */
function pngSize(data: Uint8Array): { width: number; height: number } {
  assert.deepEqual([...data.subarray(0, 8)], PNG_SIGNATURE, "image is a PNG");
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  return { width: view.getUint32(16), height: view.getUint32(20) };
}

function assertImage(gen: Generation): void {
  assert.ok(gen.image, "generation has an image");
  assert.equal(gen.image.mimeType, "image/png");
  const size = pngSize(gen.image.data);
  assert.ok(gen.image.width > 0 && gen.image.height > 0, "width/height reported");
  assert.deepEqual(size, { width: gen.image.width, height: gen.image.height }, "reported size = PNG size");
  assert.ok(gen.generationId, "generation id");
}

async function expectError(p: Promise<unknown>): Promise<ImagegenError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof ImagegenError, `expected ImagegenError, got ${String(err)}`);
    return err;
  }
  assert.fail("call succeeded, expected an error");
}

describe("interop with the Python server", { skip }, () => {
  let client: ImagegenClient;

  before(() => {
    client = new ImagegenClient({ address: ADDRESS!, timeoutMs: 60_000 });
  });
  after(() => client.close());

  it("ListModels lists the signing model", async () => {
    const models = await client.listModels();
    const names = models.map((m) => m.name);
    assert.ok(names.includes(SIGNING_MODEL), `models: ${names.join(", ")}`);
    assert.equal(models.find((m) => m.name === SIGNING_MODEL)?.requiresThoughtSignatures, true);
    assert.equal(models.filter((m) => m.isDefault).length, 1, "exactly one default model");
  });

  it("Generate returns PNG bytes with their width and height", async () => {
    const gen = await client.generate({ prompt: "a red fox in the snow", aspectRatio: "16:9", seed: 7 });
    assertImage(gen);
    assert.ok(gen.image!.width > gen.image!.height, "16:9 is landscape");
    assert.equal(gen.seed, 7);
    assert.equal(gen.aspectRatio, "16:9");
    assert.ok(gen.attempts >= 1);
    assert.ok(gen.modelTurn && gen.modelTurn.role === Role.MODEL, "model turn returned");
    const imagePart = gen.modelTurn.parts.find((p) => p.data.case === "image");
    assert.ok(imagePart?.data.case === "image" && imagePart.data.value.data === gen.image!.data, "turn completed");
  });

  it("the raw response sends the final image once; completeModelTurn restores the turn", async () => {
    const res = await client.raw.generate({ prompt: "a red fox" });
    const gen = res.generation!;
    const bare = gen.modelTurn!.parts.find((p) => p.data.case === "image");
    assert.ok(bare?.data.case === "image" && bare.data.value.data.length === 0, "no second copy on the wire");
    completeModelTurn(gen);
    assert.ok(bare.data.value.data === gen.image!.data);
  });

  it("raw stubs: model turns go back verbatim, their images once in historyImages", async () => {
    const first = (await client.raw.generate({ prompt: "a red fox", options: { model: SIGNING_MODEL } })).generation!;
    const part = first.modelTurn!.parts.find((p) => p.data.case === "image" && !p.thought);
    assert.ok(part?.data.case === "image" && part.data.value.data.length === 0);
    assert.equal(part.imageGenerationId, first.generationId);
    const history: Turn[] = [userTurn("a red fox"), first.modelTurn!];
    const historyImages = { [first.generationId]: first.image! };
    const second = (
      await client.raw.refine({ prompt: "make it night", history, historyImages, options: { model: SIGNING_MODEL } })
    ).generation!;
    assertImage(second);
    // Turn 3 through the stream: both model turns as returned, each image once.
    history.push(userTurn("make it night"), second.modelTurn!);
    historyImages[second.generationId] = second.image!;
    let last: string | undefined;
    for await (const res of client.raw.refineStream({
      prompt: "add a moon",
      history,
      historyImages,
      options: { model: SIGNING_MODEL },
    })) {
      last = res.event.case;
    }
    assert.equal(last, "completed");
    // Without the image, the violation says which key to set.
    const err = await expectError(client.refine({ prompt: "again", history: [userTurn("a red fox"), first.modelTurn!] }));
    assert.ok(err instanceof InvalidRequestError, err.name);
    const violation = err.fieldViolations.find((v) => v.field === "history[1].parts[1].image.data");
    assert.ok(violation?.description.includes(`history_images['${first.generationId}']`), violation?.description);
  });

  it("GenerateStream reports a scripted 429, the retry, and the image", async () => {
    const marker = await scenario(["rate_limit:0.2", "ok"]);
    const events: StreamEvent[] = [];
    for await (const ev of client.generateStream({ prompt: `a lighthouse ${marker}` })) {
      events.push(ev);
    }
    // Heartbeats and previews may interleave; the attempt sequence may not.
    const kinds = events.map((e) => e.case).filter((c) => c !== "heartbeat" && c !== "preview");
    assert.deepEqual(kinds, ["accepted", "attemptStarted", "attemptFailed", "attemptStarted", "completed"]);

    const accepted = events.find((e) => e.case === "accepted");
    assert.ok(accepted?.case === "accepted" && accepted.value.generationId && accepted.value.maxAttempts >= 2);
    const started = events.filter((e) => e.case === "attemptStarted").map((e) => e.value.attempt);
    assert.deepEqual(started, [1, 2]);

    const failed = events.find((e) => e.case === "attemptFailed");
    assert.ok(failed?.case === "attemptFailed");
    assert.equal(failed.value.attempt, 1);
    assert.equal(failed.value.willRetry, true);
    assert.equal(failed.value.code, Code.ResourceExhausted);
    assert.equal(failed.value.reason, "UPSTREAM_RATE_LIMITED");
    assert.ok(failed.value.retryDelay, "retry delay sent");
    const delayMs = Number(failed.value.retryDelay.seconds) * 1000 + failed.value.retryDelay.nanos / 1e6;
    assert.ok(delayMs > 0 && delayMs <= 5_000, `retry delay ${delayMs} ms`);

    const done = events.at(-1);
    assert.ok(done?.case === "completed");
    assertImage(done.value);
    assert.equal(done.value.attempts, 2);
    assert.equal(done.value.generationId, accepted.value.generationId);
  });

  it("Refine: two turns on a model that enforces thought signatures", async () => {
    const first = await client.generate({ prompt: "a lighthouse at dusk", model: SIGNING_MODEL });
    assertImage(first);
    assert.equal(first.model, SIGNING_MODEL);
    assert.ok(first.thoughtSignature.length > 0, "signature on the image");
    const modelTurn: Turn = first.modelTurn!;
    assert.ok(
      modelTurn.parts.some((p) => p.data.case === "image" && p.thoughtSignature.length > 0),
      "model turn carries the signed image",
    );

    // Turn 2: history = the user turn we sent + the model turn as returned.
    const history = [userTurn("a lighthouse at dusk"), modelTurn];
    const second = await client.refine({ prompt: "make it night", history, model: SIGNING_MODEL });
    assertImage(second);
    assert.notEqual(second.generationId, first.generationId);

    // Turn 3 through the stream, continuing from turn 2.
    const events: StreamEvent[] = [];
    for await (const ev of client.refineStream({
      prompt: "add a full moon",
      history: [...history, userTurn("make it night"), second.modelTurn!],
      model: SIGNING_MODEL,
    })) {
      events.push(ev);
    }
    const last = events.at(-1);
    assert.ok(last?.case === "completed");
    assertImage(last.value);

    // The same conversation without signatures is refused.
    const unsigned = clone(TurnSchema, modelTurn);
    for (const p of unsigned.parts) p.thoughtSignature = new Uint8Array();
    const err = await expectError(
      client.refine({ prompt: "make it night", history: [userTurn("a lighthouse at dusk"), unsigned], model: SIGNING_MODEL }),
    );
    assert.ok(err instanceof InvalidRequestError, err.name);
    assert.equal(err.code, Code.InvalidArgument);
  });

  it("Conversation keeps the history and signatures for the caller", async () => {
    const conv = new Conversation(client, { model: SIGNING_MODEL });
    await conv.generate("a paper boat");
    const edited = await conv.refine("make it red");
    assertImage(edited);
    assert.equal(conv.history.length, 4);
    assert.deepEqual(
      conv.history.map((t) => t.role),
      [Role.USER, Role.MODEL, Role.USER, Role.MODEL],
    );
  });

  it("a blocked prompt is INVALID_ARGUMENT with ErrorInfo reason CONTENT_BLOCKED", async () => {
    const marker = await scenario(["prompt_blocked"]);
    const err = await expectError(client.generate({ prompt: `something unsafe ${marker}` }));
    assert.ok(err instanceof ContentPolicyError, err.name);
    assert.equal(err.code, Code.InvalidArgument);
    assert.equal(err.codeName, "INVALID_ARGUMENT");
    assert.equal(err.reason, "CONTENT_BLOCKED");
    assert.equal(err.domain, "imagegen.dev");
    assert.equal(err.blockSide, "prompt");
    assert.ok(err.generationId, "generationId in ErrorInfo metadata");
  });

  it("a blocked output (IMAGE_SAFETY) ends a stream with CONTENT_BLOCKED", async () => {
    const marker = await scenario(["output_blocked:IMAGE_SAFETY"]);
    const seen: string[] = [];
    const err = await expectError(
      (async () => {
        for await (const ev of client.generateStream({ prompt: `a portrait ${marker}` })) seen.push(ev.case);
      })(),
    );
    assert.ok(err instanceof ContentPolicyError, err.name);
    assert.equal(err.code, Code.InvalidArgument);
    assert.equal(err.reason, "CONTENT_BLOCKED");
    assert.equal(err.blockSide, "output");
    assert.equal(err.finishReason, "IMAGE_SAFETY");
    assert.equal(seen[0], "accepted");
    assert.ok(!seen.includes("completed"));
  });

  it("breaking out of a stream cancels the call and the upstream request", async () => {
    const { id, marker } = await scenarioWithId(["latency:5"]);
    const started = Date.now();
    for await (const ev of client.generateStream({ prompt: `slow ${marker}` })) {
      if (ev.case !== "attemptStarted") continue;
      await waitForStats(id, (s) => s.received === 1); // the upstream call is in flight
      break;
    }
    const stats = await waitForStats(id, (s) => s.aborted === 1);
    assert.equal(stats.completed, 0);
    assert.ok(Date.now() - started < 3_000, "cancelled, not waited out");
    assert.ok((await client.listModels()).length > 0, "client still usable");
  });

  it("aborting the signal cancels a unary call", async () => {
    const { id, marker } = await scenarioWithId(["latency:5"]);
    const ac = new AbortController();
    const call = client.generate({ prompt: `slow ${marker}` }, { signal: ac.signal });
    await waitForStats(id, (s) => s.received === 1);
    ac.abort();
    const err = await expectError(call);
    assert.ok(err instanceof RequestCancelledError, `${err.name}: ${err.message}`);
    assert.equal(err.code, Code.Canceled);
    await waitForStats(id, (s) => s.aborted === 1);
  });

  it("validation errors carry BadRequest field violations", async () => {
    const err = await expectError(client.generate({ prompt: "" }));
    assert.ok(err instanceof InvalidRequestError, err.name);
    assert.equal(err.code, Code.InvalidArgument);
    assert.equal(err.reason, "INVALID_REQUEST");
    assert.ok(
      err.fieldViolations.some((v) => v.field === "prompt"),
      JSON.stringify(err.fieldViolations.map((v) => v.field)),
    );
  });

  it("a deadline shorter than the upstream latency is DEADLINE_EXCEEDED", async () => {
    const marker = await scenario(["latency:5"]);
    const started = Date.now();
    const err = await expectError(client.generate({ prompt: `slow ${marker}` }, { timeoutMs: 500 }));
    assert.equal(err.code, Code.DeadlineExceeded, `${err.name}: ${err.message}`);
    assert.ok(Date.now() - started < 4_000, "failed at the deadline, not after the upstream");
  });
});
