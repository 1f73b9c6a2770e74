package dev.edgekto.llama;

import dev.edgekto.core.ChatEngine;
import dev.edgekto.core.ChatMl;
import dev.edgekto.core.GenerationTimer;
import dev.edgekto.core.Utf8Stream;
import java.util.List;

/** The app's chat backend for a GGUF artifact: ChatML rendering + llama.cpp + UTF-8-safe streaming. */
public final class LlamaChat implements ChatEngine {
    private final LlamaEngine engine;
    private final ChatMl chat;
    private final String label;
    private int seed = 0;

    /** @param chatTemplate the bundle manifest's tokenizer.chat_template (what training used). */
    public LlamaChat(LlamaEngine engine, String chatTemplate, String label) {
        this.engine = engine;
        this.chat = ChatMl.fromTemplate(chatTemplate);
        this.label = label;
    }

    /** The engine underneath, for fixed-length latency runs (LatencyBench). */
    public LlamaEngine engine() {
        return engine;
    }

    public int[] promptIds(List<String[]> messages) {
        return engine.tokenizePrompt(chat.render(messages, true));
    }

    @Override
    public Answer chat(List<String[]> messages, int maxTokens, float temperature, Listener listener) {
        GenerationTimer timer = new GenerationTimer(System.nanoTime());
        int[] prompt = promptIds(messages);
        Utf8Stream utf8 = new Utf8Stream();
        StringBuilder text = new StringBuilder();
        boolean[] cancelled = {false};
        int n = engine.generate(prompt, maxTokens, temperature, seed++, (id, piece) -> {
            timer.onToken(System.nanoTime());
            String delta = utf8.push(piece);
            text.append(delta);
            if (!delta.isEmpty() && !listener.onText(delta)) cancelled[0] = true;
            return !cancelled[0];
        });
        String tail = utf8.flush();
        if (!tail.isEmpty()) {
            text.append(tail);
            listener.onText(tail);
        }
        String stop = cancelled[0] ? "cancelled" : n >= Math.min(maxTokens, engine.nCtx - prompt.length) ? "length" : "eos";
        return new Answer(text.toString(), stop, prompt.length, timer);
    }

    @Override
    public String describe() {
        return label + " · llama.cpp · " + engine.nThreads + " threads";
    }

    @Override
    public void close() {
        engine.close();
    }
}
