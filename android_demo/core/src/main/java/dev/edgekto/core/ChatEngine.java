package dev.edgekto.core;

import java.util.List;

/**
 * One chat backend of the app (llama.cpp for the GGUF artifact, onnxruntime-genai for ONNX):
 * streams an answer to a conversation. Implementations are not thread-safe; the app calls them
 * from one worker thread.
 */
public interface ChatEngine extends AutoCloseable {
    /** Receives text as it completes; return false to stop generating (the user pressed stop). */
    interface Listener {
        boolean onText(String delta);
    }

    /** What came out: the whole answer, why it stopped and its timings. */
    final class Answer {
        public final String text;
        public final String stop; // "eos", "length", "cancelled"
        public final int promptTokens;
        public final GenerationTimer timer;

        public Answer(String text, String stop, int promptTokens, GenerationTimer timer) {
            this.text = text;
            this.stop = stop;
            this.promptTokens = promptTokens;
            this.timer = timer;
        }
    }

    /** @param messages {role, content} pairs, oldest first; temperature 0 means greedy. */
    Answer chat(List<String[]> messages, int maxTokens, float temperature, Listener listener) throws Exception;

    /** A short description for the settings screen ("llama.cpp Q4_K_M, 4 threads"). */
    String describe();

    @Override
    void close();
}
