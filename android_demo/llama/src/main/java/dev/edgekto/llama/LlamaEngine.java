package dev.edgekto.llama;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;

/**
 * A GGUF model in llama.cpp through JNI (libedgekto_llama: src/main/cpp/edge_llama.cpp).
 *
 * <p>Plain Java (no Android classes), so the same class runs on the phone and in the host test,
 * which loads the library built against llama-cpp-python's libllama. One engine is one model and
 * one context; calls are serialised because a llama.cpp context is not thread-safe.
 */
public final class LlamaEngine implements AutoCloseable {
    /** Called for each generated token with its raw UTF-8 bytes; return false to stop. */
    public interface TokenSink {
        boolean onToken(int id, byte[] piece);
    }

    private static volatile boolean loaded;
    private long handle;
    public final File path;
    public final int nThreads;
    public final boolean addBos;
    public final int bos, eos, nVocab, nCtx;

    /** Load libedgekto_llama once (System.loadLibrary: the APK's jniLibs, or -Djava.library.path on a host). */
    public static synchronized void loadLibrary() {
        if (!loaded) {
            System.loadLibrary("edgekto_llama");
            loaded = true;
        }
    }

    public LlamaEngine(File gguf, int nCtx, int nThreads) throws IOException {
        if (!gguf.isFile()) throw new IOException(gguf + ": no such file");
        if (nCtx < 16) throw new IllegalArgumentException("nCtx must be at least 16, got " + nCtx);
        if (nThreads < 1) throw new IllegalArgumentException("nThreads must be at least 1, got " + nThreads);
        loadLibrary();
        this.path = gguf;
        this.nThreads = nThreads;
        this.handle = nativeLoad(gguf.getPath().getBytes(StandardCharsets.UTF_8), nCtx, nThreads);
        int[] info = nativeInfo(handle);
        this.addBos = info[0] != 0;
        this.bos = info[1];
        this.eos = info[2];
        this.nVocab = info[3];
        this.nCtx = info[4];
    }

    /** A GGUF metadata string (e.g. "tokenizer.chat_template"), or null when absent. */
    public synchronized String meta(String key) {
        byte[] v = nativeMeta(live(), key.getBytes(StandardCharsets.UTF_8));
        return v == null ? null : new String(v, StandardCharsets.UTF_8);
    }

    public synchronized int[] tokenize(String text, boolean addSpecial, boolean parseSpecial) {
        return nativeTokenize(live(), text.getBytes(StandardCharsets.UTF_8), addSpecial, parseSpecial);
    }

    /**
     * Token ids of a rendered chat prompt: special tokens parsed, BOS added only when the model
     * wants one and the rendered text does not already start with it (as the Python runtime does).
     */
    public int[] tokenizePrompt(String rendered) {
        boolean addSpecial = addBos && !(bos >= 0 && rendered.startsWith(new String(piece(bos), StandardCharsets.UTF_8)));
        return tokenize(rendered, addSpecial, true);
    }

    public synchronized byte[] piece(int token) {
        return nativePiece(live(), token);
    }

    /** @return tokens generated; the KV of the longest common prefix with the previous prompt is reused. */
    public synchronized int generate(int[] prompt, int maxTokens, float temperature, int seed, TokenSink sink) {
        if (maxTokens < 1) throw new IllegalArgumentException("maxTokens must be at least 1, got " + maxTokens);
        return nativeGenerate(live(), prompt, maxTokens, temperature, seed, false, sink);
    }

    /** Exactly {@code nTokens} greedy tokens, end-of-sequence ignored: the fixed length of a latency run. */
    public synchronized int generateFixed(int[] prompt, int nTokens, TokenSink sink) {
        if (nTokens < 1) throw new IllegalArgumentException("nTokens must be at least 1, got " + nTokens);
        return nativeGenerate(live(), prompt, nTokens, 0f, 0, true, sink);
    }

    /** Forget the cached prefix: the next prompt is computed from scratch. */
    public synchronized void reset() {
        nativeReset(live());
    }

    /** Prompt tokens whose KV the last {@link #generate} call found cached and did not recompute. */
    public synchronized int lastReusedTokens() {
        return nativeLastReused(live());
    }

    private long live() {
        if (handle == 0) throw new IllegalStateException("engine for " + path + " is closed");
        return handle;
    }

    @Override
    public synchronized void close() {
        if (handle != 0) {
            nativeFree(handle);
            handle = 0;
        }
    }

    private static native long nativeLoad(byte[] path, int nCtx, int nThreads) throws IOException;
    private static native void nativeFree(long handle);
    private static native void nativeReset(long handle);
    private static native int nativeLastReused(long handle);
    private static native int[] nativeInfo(long handle);
    private static native byte[] nativeMeta(long handle, byte[] key);
    private static native int[] nativeTokenize(long handle, byte[] text, boolean addSpecial, boolean parseSpecial);
    private static native byte[] nativePiece(long handle, int token);
    private static native int nativeGenerate(long handle, int[] prompt, int maxTokens, float temperature, int seed, boolean ignoreEos,
                                             TokenSink sink);
}
