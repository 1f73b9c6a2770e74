package dev.edgekto.demo.onnx;

import ai.onnxruntime.genai.GenAIException;
import ai.onnxruntime.genai.Generator;
import ai.onnxruntime.genai.GeneratorParams;
import ai.onnxruntime.genai.Model;
import ai.onnxruntime.genai.Tokenizer;
import ai.onnxruntime.genai.TokenizerStream;
import dev.edgekto.core.ChatEngine;
import dev.edgekto.core.ChatMl;
import dev.edgekto.core.GenerationTimer;
import java.io.File;
import java.util.List;

/**
 * The ONNX int4 artifact through onnxruntime-genai's Java API (compiled only when its Android AAR
 * is in app/libs). Same loop as the Python runtime's ONNX backend: encode the rendered prompt,
 * append it, then generate_next_token until done or the budget is spent. Threads come from the
 * bundle's genai_config.json (changing them would change a hashed file).
 */
public final class OnnxChat implements ChatEngine {
    private final Model model;
    private final Tokenizer tokenizer;
    private final ChatMl chat;
    private final String label;

    public OnnxChat(File dir, String chatTemplate, String label) throws GenAIException {
        this.chat = ChatMl.fromTemplate(chatTemplate);
        this.model = new Model(dir.getPath());
        this.tokenizer = new Tokenizer(model);
        this.label = label;
    }

    @Override
    public Answer chat(List<String[]> messages, int maxTokens, float temperature, Listener listener) throws GenAIException {
        GenerationTimer timer = new GenerationTimer(System.nanoTime());
        int[] ids = tokenizer.encode(chat.render(messages, true)).getSequence(0);
        StringBuilder text = new StringBuilder();
        String stop = "length";
        try (GeneratorParams params = new GeneratorParams(model)) {
            params.setSearchOption("max_length", ids.length + maxTokens);
            if (temperature > 0) {
                params.setSearchOption("do_sample", true);
                params.setSearchOption("temperature", temperature);
            }
            try (Generator gen = new Generator(model, params); TokenizerStream stream = tokenizer.createStream()) {
                gen.appendTokens(ids);
                int n = 0;
                while (n < maxTokens) {
                    if (gen.isDone()) {
                        stop = "eos";
                        break;
                    }
                    gen.generateNextToken();
                    timer.onToken(System.nanoTime());
                    n++;
                    String delta = stream.decode(gen.getLastTokenInSequence(0));
                    text.append(delta);
                    if (!delta.isEmpty() && !listener.onText(delta)) {
                        stop = "cancelled";
                        break;
                    }
                }
            }
        }
        return new Answer(text.toString(), stop, ids.length, timer);
    }

    @Override
    public String describe() {
        return label + " · onnxruntime-genai";
    }

    @Override
    public void close() {
        tokenizer.close();
        model.close();
    }
}
