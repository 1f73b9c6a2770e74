package dev.edgekto.llama;

import java.io.File;
import java.util.Random;

/**
 * The app's latency path (JNI + LatencyBench.once) on this machine, for benchmarks/jni_latency.py:
 *   java ... dev.edgekto.llama.LlamaHostBench GGUF THREADS WARMUP RUNS N_PROMPT N_GEN SEED
 * prints one JSON line per measured run: {"ttft": s, "e2e": s, "tpot": s}.
 */
public final class LlamaHostBench {
    public static void main(String[] a) throws Exception {
        int warmup = Integer.parseInt(a[2]), runs = Integer.parseInt(a[3]);
        int nPrompt = Integer.parseInt(a[4]), nGen = Integer.parseInt(a[5]);
        Random rnd = new Random(Long.parseLong(a[6]));
        try (LlamaEngine e = new LlamaEngine(new File(a[0]), 2048, Integer.parseInt(a[1]))) {
            for (int i = 0; i < warmup + runs; i++) {
                double[] r = LatencyBench.once(e, LatencyBench.syntheticPrompt(e, nPrompt, rnd), nGen);
                if (i >= warmup) System.out.printf(java.util.Locale.ROOT, "{\"ttft\": %.9f, \"e2e\": %.9f, \"tpot\": %.9f}%n", r[0], r[1], r[2]);
            }
        }
    }
}
