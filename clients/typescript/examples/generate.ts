// Example: generate an image with progress, then refine it twice.
//
//   npm run build
//   node dist/examples/generate.js [address] [prompt]
//
// address defaults to $IMAGEGEN_ADDRESS or 127.0.0.1:50051. Writes out-1.png,
// out-2.png and out-3.png in the current directory.
import { writeFile } from "node:fs/promises";
import {
  Conversation,
  ContentPolicyError,
  ImagegenClient,
  ImagegenError,
  RateLimitError,
  userTurn,
} from "../src/index.js";

const address = process.argv[2] ?? process.env["IMAGEGEN_ADDRESS"] ?? "127.0.0.1:50051";
const prompt = process.argv[3] ?? "a lighthouse on a cliff at dusk, watercolor";

function seconds(d: { seconds: bigint; nanos: number } | undefined): string {
  return d === undefined ? "?" : (Number(d.seconds) + d.nanos / 1e9).toFixed(2);
}

async function main(): Promise<void> {
  using client = new ImagegenClient({ address, timeoutMs: 180_000 });

  const models = await client.listModels();
  console.log("models:", models.map((m) => (m.isDefault ? `${m.name} (default)` : m.name)).join(", "));
  const model = models.find((m) => m.requiresThoughtSignatures)?.name ?? "";

  // 1. Stream a generation: each attempt, each retry with its delay, the result.
  let first;
  for await (const ev of client.generateStream({ prompt, model, aspectRatio: "16:9" })) {
    switch (ev.case) {
      case "accepted":
        console.log(`accepted ${ev.value.generationId} model=${ev.value.model} seed=${ev.value.seed}`);
        break;
      case "attemptStarted":
        console.log(`attempt ${ev.value.attempt}/${ev.value.maxAttempts}`);
        break;
      case "attemptFailed":
        console.log(`  failed: ${ev.value.reason} (${ev.value.message})` +
          (ev.value.willRetry ? `, retrying in ${seconds(ev.value.retryDelay)} s` : ""));
        break;
      case "heartbeat":
        console.log(`  ... ${seconds(ev.value.elapsed)} s`);
        break;
      case "preview":
        console.log(`  draft ${ev.value.index}`);
        break;
      case "completed":
        first = ev.value;
        break;
    }
  }
  if (!first?.image) throw new Error("stream ended without an image");
  await writeFile("out-1.png", first.image.data);
  console.log(`out-1.png ${first.image.width}x${first.image.height} in ${first.attempts} attempt(s)`);

  // 2. Refine by hand: history = the user turn we sent + the model turn as returned.
  const second = await client.refine({
    prompt: "make it night, with a full moon",
    history: [userTurn(prompt), first.modelTurn!],
    model,
  });
  await writeFile("out-2.png", second.image!.data);
  console.log(`out-2.png ${second.image!.width}x${second.image!.height}`);

  // 3. Or let a Conversation keep the history and signatures.
  const conv = new Conversation(client, { model });
  await conv.generate(prompt);
  const third = await conv.refine("add a small red boat");
  await writeFile("out-3.png", third.image!.data);
  console.log(`out-3.png after ${conv.history.length / 2} turns`);
}

main().catch((err: unknown) => {
  if (err instanceof RateLimitError) {
    console.error(`rate limited (${err.reason}); retry after ${err.retryAfter ?? "?"} s`);
  } else if (err instanceof ContentPolicyError) {
    console.error(`blocked on the ${err.blockSide} side: ${err.blockReason || err.finishReason}`);
  } else if (err instanceof ImagegenError) {
    console.error(`${err.name} ${err.codeName} ${err.reason}: ${err.message}`);
  } else {
    console.error(err);
  }
  process.exitCode = 1;
});
