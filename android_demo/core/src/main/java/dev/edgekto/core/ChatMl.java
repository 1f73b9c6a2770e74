package dev.edgekto.core;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Renders chat messages the way the bundle's ChatML chat template does (SmolLM2, Qwen2.5).
 *
 * <p>The phone has no Jinja engine, so instead of evaluating the template we recognise its family
 * and render that family's fixed layout, including the default system prompt the template injects
 * when the conversation has none. Whether this matches what training saw is not assumed: the app
 * (and the host test of the llama module) tokenizes every golden prompt of the bundle this way and
 * compares with the token ids recorded at export ({@code prompt_ids} in golden.jsonl).
 */
public final class ChatMl {
    private static final Pattern DEFAULT_SYSTEM =
            Pattern.compile("<\\|im_start\\|>system(?:\\n|\\\\n)([^'\"]*?)<\\|im_end\\|>");

    /** The system prompt the template adds when the first message is not a system message, or null. */
    public final String defaultSystem;

    private ChatMl(String defaultSystem) {
        this.defaultSystem = defaultSystem;
    }

    /** @throws IllegalArgumentException when the template is not of the ChatML family. */
    public static ChatMl fromTemplate(String template) {
        if (template == null || !template.contains("<|im_start|>") || !template.contains("<|im_end|>"))
            throw new IllegalArgumentException("the bundle's chat template is not ChatML (<|im_start|> ... <|im_end|>); "
                    + "this app renders only the ChatML family (SmolLM2, Qwen2.5) — add a renderer for this model");
        Matcher m = DEFAULT_SYSTEM.matcher(template);
        String sys = m.find() ? m.group(1).replace("\\n", "\n") : null;
        return new ChatMl(sys);
    }

    /** @param messages {role, content} pairs, oldest first. */
    public String render(List<String[]> messages, boolean addGenerationPrompt) {
        StringBuilder sb = new StringBuilder();
        if (defaultSystem != null && (messages.isEmpty() || !"system".equals(messages.get(0)[0])))
            turn(sb, "system", defaultSystem);
        for (String[] m : messages) turn(sb, m[0], m[1]);
        if (addGenerationPrompt) sb.append("<|im_start|>assistant\n");
        return sb.toString();
    }

    /** Chat messages from parsed JSON ([{"role", "content"}, ...]) as {role, content} pairs. */
    @SuppressWarnings("unchecked")
    public static List<String[]> messagesFromJson(Object json) {
        List<String[]> out = new ArrayList<>();
        for (Object o : (List<Object>) json) {
            Map<String, Object> m = (Map<String, Object>) o;
            out.add(new String[] {(String) m.get("role"), (String) m.get("content")});
        }
        return out;
    }

    /** The inverse: {role, content} pairs as the JSON list the runtime writes (role first). */
    public static List<Object> messagesToJson(List<String[]> messages) {
        List<Object> out = new ArrayList<>();
        for (String[] m : messages) {
            Map<String, Object> msg = new LinkedHashMap<>();
            msg.put("role", m[0]);
            msg.put("content", m[1]);
            out.add(msg);
        }
        return out;
    }

    private static void turn(StringBuilder sb, String role, String content) {
        sb.append("<|im_start|>").append(role).append('\n').append(content).append("<|im_end|>\n");
    }
}
