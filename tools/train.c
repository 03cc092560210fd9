/*
 * train.c - `deltanet train`: trains a language model of any mixer pattern on byte-level text or
 * on the MQAR recall task, with AdamW, warmup + cosine schedule, gradient accumulation and
 * clipping, periodic evaluation on held-out data, a progress line, a JSON log and an SVG loss
 * curve, and checkpoints (DIR/checkpoint.safetensors: the model, the optimizer's moments and the
 * options) every --save-every steps, at the end, and when SIGINT / SIGTERM stop the run after
 * the current step. --resume continues from the checkpoint with the same options, and gives the
 * losses an uninterrupted run would have, to the last bit (batches are functions of the seed and
 * the step).
 */
#include "train.h"
#include "bench.h"
#include "opts.h"
#include "svg.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_CORPUS "/usr/share/games/fortunes"

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void train_options_default(train_options *o) {
    memset(o, 0, sizeof *o);
    o->model = dn_model_config_default();
    o->task = "text";
    o->data = DEFAULT_CORPUS;
    o->B = 16, o->T = 128, o->accum = 1, o->steps = 600;
    o->lr = 3e-3, o->warmup = 50, o->min_lr_ratio = 0.1;
    o->opt = dn_adamw_config_default();
    o->seed = 1234;
    o->eval_every = 100, o->eval_batches = 8;
    o->mqar_vocab = 8192, o->mqar_pairs = 16;
    o->out_dir = "deltanet-train";
    o->save_every = 0;
}

static void usage(void) {
    printf(
        "usage: deltanet train [options]\n"
        "Trains a decoder-only LM (Gated DeltaNet, softmax attention or a hybrid) in C.\n"
        "  --task text|mqar      byte-level language modelling (default) or associative recall\n"
        "  --data PATH           text file, or a directory of text files (default %s,\n"
        "                        the Debian fortunes package; files ending .dat or .u8 skipped)\n"
        "  --pattern STR         mixer per layer, repeated: G Gated DeltaNet, A attention\n"
        "                        (default G; GGGA is the 3:1 hybrid of Qwen3.5 / Qwen3-Next)\n"
        "  --layers N --width D --mlp I      (default 4, 128, 352)\n"
        "  --heads H --head-dim K            heads of both mixers (default 2, 64)\n"
        "  --kv-heads N                      attention key/value heads (default = heads)\n"
        "  --attn-conv W                     attention with a causal depthwise convolution of\n"
        "                                    width W (2-4) over q, k, v (default 0: none)\n"
        "  --value-heads N                   Gated DeltaNet value heads (default = heads)\n"
        "  --batch B --seq T --accum N       sequences per micro-batch, length, micro-batches\n"
        "                                    per step (default 16, 128, 1)\n"
        "  --steps N --lr X --warmup N --min-lr-ratio X     (default 600, 3e-3, 50, 0.1)\n"
        "  --wd X --clip X --beta2 X         AdamW (default 0.1, 1.0, 0.95)\n"
        "  --eval-every N --eval-batches N   held-out evaluation (default 100, 8)\n"
        "  --mqar-vocab V --mqar-pairs N     MQAR task (default 8192, 16)\n"
        "  --decay-init LO,HI                initial decay per token of the gated layers' heads\n"
        "                                    (G, M) in [LO, HI] (e.g. 0.99,0.999 for recall;\n"
        "                                    default: A in [1, 16], dt in [1e-3, 0.1])\n"
        "  --seed N --threads N --out DIR    (default 1234, all cores, deltanet-train)\n"
        "  --config FILE                     the model's config as JSON (Hugging Face key names,\n"
        "                                    \"layer_pattern\" for the mixers; options after\n"
        "                                    it override it)\n"
        "  --save-every N                    checkpoint every N steps (default: at the end and\n"
        "                                    on SIGINT / SIGTERM only)\n"
        "  --resume                          continue from DIR/checkpoint.safetensors (same\n"
        "                                    options), bit-identical to an uninterrupted run\n"
        "  --quiet                           no progress line\n"
        "Writes DIR/log.jsonl (one record per evaluation and a summary), DIR/loss.svg and\n"
        "DIR/checkpoint.safetensors.\n",
        DEFAULT_CORPUS);
}

static int load_config(const char *path, dn_model_config *c) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "train: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    char buf[65536];
    const size_t n = fread(buf, 1, sizeof buf, f);
    const int big = n == sizeof buf;
    fclose(f);
    if (big) {
        fprintf(stderr, "train: %s is larger than a config (64 KiB)\n", path);
        return -1;
    }
    if (dn_model_config_from_json(c, buf, n) != DN_OK) {
        fprintf(stderr, "train: %s: %s\n", path, dn_last_error());
        return -1;
    }
    return 0;
}

/* Returns 0 to run, 1 after --help, -1 on a bad option (message printed). */
int train_parse(train_options *o, int argc, char **argv) {
    int64_t heads = -1, head_dim = -1, kv = -1, vh = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return 1;
        }
        if (!strcmp(a, "--quiet")) {
            o->quiet = 1;
            continue;
        }
        if (!strcmp(a, "--resume")) {
            o->resume = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "train: option %s needs a value (or is unknown; see --help)\n", a);
            return -1;
        }
        const char *v = argv[++i];
        int64_t n;
        int r = 0;
#define I64(flag, lo, hi, dst)                                                                     \
    else if (!strcmp(a, flag)) {                                                                   \
        r = opt_i64("train", flag, v, lo, hi, &n);                                                 \
        if (!r) dst = n;                                                                           \
    }
#define F64(flag, lo, hi, dst)                                                                     \
    else if (!strcmp(a, flag)) r = opt_f64("train", flag, v, lo, hi, &dst);
        if (!strcmp(a, "--task")) {
            if (strcmp(v, "text") && strcmp(v, "mqar")) {
                fprintf(stderr, "train: --task must be text or mqar\n");
                return -1;
            }
            o->task = v;
        } else if (!strcmp(a, "--data"))
            o->data = v;
        else if (!strcmp(a, "--config")) {
            if (load_config(v, &o->model)) return -1;
            o->config_path = v;
        } else if (!strcmp(a, "--out"))
            o->out_dir = v;
        else if (!strcmp(a, "--pattern")) {
            if (strlen(v) == 0 || strlen(v) > DN_MODEL_MAX_LAYERS) {
                fprintf(stderr, "train: --pattern must have 1 to %d letters\n",
                        DN_MODEL_MAX_LAYERS);
                return -1;
            }
            snprintf(o->model.layer_pattern, sizeof o->model.layer_pattern, "%s", v);
        }
        I64("--layers", 1, DN_MODEL_MAX_LAYERS, o->model.num_hidden_layers)
        I64("--width", 1, 65536, o->model.hidden_size)
        I64("--mlp", 1, 262144, o->model.intermediate_size)
        I64("--heads", 1, 1024, heads)
        I64("--head-dim", 2, 256, head_dim)
        I64("--kv-heads", 1, 1024, kv)
        I64("--attn-conv", 0, 4, o->model.attn_conv_kernel_dim)
        I64("--value-heads", 1, 1024, vh)
        I64("--batch", 1, 1 << 20, o->B)
        I64("--seq", 1, 1 << 24, o->T)
        I64("--accum", 1, 1 << 16, o->accum)
        I64("--steps", 1, (int64_t)1 << 40, o->steps)
        I64("--warmup", 0, (int64_t)1 << 40, o->warmup)
        I64("--eval-every", 1, (int64_t)1 << 40, o->eval_every)
        I64("--eval-batches", 0, 1 << 20, o->eval_batches)
        I64("--mqar-vocab", 8, 1 << 24, o->mqar_vocab)
        I64("--mqar-pairs", 1, 1 << 20, o->mqar_pairs)
        I64("--threads", 1, 1024, o->threads)
        I64("--save-every", 0, (int64_t)1 << 40, o->save_every)
        F64("--lr", 0, 10, o->lr)
        F64("--min-lr-ratio", 0, 1, o->min_lr_ratio)
        F64("--wd", 0, 100, o->opt.weight_decay)
        F64("--clip", 0, 1e30, o->opt.grad_clip)
        F64("--beta2", 0, 0.999999, o->opt.beta2)
        else if (!strcmp(a, "--decay-init")) {
            double d[2];
            r = opt_f64_pair("train", a, v, 1e-9, 0.999999, d);
            if (!r) o->decay_lo = d[0], o->decay_hi = d[1];
        }
        else if (!strcmp(a, "--seed")) {
            r = opt_i64("train", "--seed", v, 0, INT64_MAX, &n);
            if (!r) o->seed = (uint64_t)n;
        }
        else {
            fprintf(stderr, "train: unknown option %s (see --help)\n", a);
            return -1;
        }
#undef I64
#undef F64
        if (r) return -1;
    }
    dn_model_config *c = &o->model;
    if (heads > 0) c->num_attention_heads = c->linear_num_key_heads = heads;
    if (head_dim > 0) c->head_dim = c->linear_key_head_dim = c->linear_value_head_dim = head_dim;
    if (kv > 0 || heads > 0) c->num_key_value_heads = kv > 0 ? kv : heads;
    if (vh > 0 || heads > 0) c->linear_num_value_heads = vh > 0 ? vh : heads;
    if (!strcmp(o->task, "mqar")) c->vocab_size = o->mqar_vocab;
    if (dn_model_config_check(c) != DN_OK) {
        fprintf(stderr, "train: %s\n", dn_last_error());
        return -1;
    }
    return 0;
}

/* The corpus: one file, or every regular file of a directory in name order (the fortunes
 * package's index files .dat and its .u8 links skipped). */
static int load_corpus(const char *path, dn_text_data **out) {
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "train: cannot read %s: %s%s\n", path, strerror(errno),
                !strcmp(path, DEFAULT_CORPUS)
                    ? " (install the corpus: apt-get install fortunes, or pass --data FILE)"
                    : "");
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        if (dn_text_data_load(out, path, 0.1) != DN_OK) {
            fprintf(stderr, "train: %s\n", dn_last_error());
            return -1;
        }
        return 0;
    }
    struct dirent **names;
    int n = scandir(path, &names, NULL, alphasort);
    if (n < 0) {
        fprintf(stderr, "train: cannot list %s\n", path);
        return -1;
    }
    size_t cap = 1 << 20, len = 0;
    uint8_t *buf = malloc(cap);
    int rc = buf ? 0 : -1;
    for (int i = 0; i < n; i++) {
        const char *nm = names[i]->d_name;
        const size_t ln = strlen(nm);
        const int skip = nm[0] == '.' || (ln > 4 && !strcmp(nm + ln - 4, ".dat")) ||
                         (ln > 3 && !strcmp(nm + ln - 3, ".u8"));
        char full[4096];
        if (!skip && rc == 0 && snprintf(full, sizeof full, "%s/%s", path, nm) < (int)sizeof full &&
            stat(full, &st) == 0 && S_ISREG(st.st_mode)) {
            FILE *f = fopen(full, "rb");
            size_t got;
            while (f && rc == 0) {
                if (len == cap) {
                    uint8_t *nb = realloc(buf, cap * 2);
                    if (!nb) {
                        rc = -1;
                        break;
                    }
                    buf = nb, cap *= 2;
                }
                if ((got = fread(buf + len, 1, cap - len, f)) == 0) break;
                len += got;
            }
            if (f) fclose(f);
        }
        free(names[i]);
    }
    free(names);
    if (rc == 0 && dn_text_data_from_memory(out, buf, len, 0.1) != DN_OK) {
        fprintf(stderr, "train: %s\n", dn_last_error());
        rc = -1;
    }
    free(buf);
    return rc;
}

/* FLOPs per token of one training step (forward + backward = 3 x forward): every weight
 * multiplies once per token (2 FLOPs), the LM head over the vocabulary, the attention scores
 * and values over the T/2 earlier tokens on average, the Gated DeltaNet recurrence's
 * 4 products of K x V per value head (decay, read, write, output), conv and norms not counted. */
double train_flops_per_token(const dn_model *m, int64_t T) {
    const dn_model_config *c = dn_model_get_config(m);
    double fwd = 0;
    for (int64_t t = 0; t < dn_model_num_tensors(m); t++) {
        dn_param_info ti;
        dn_model_param_info(m, t, &ti);
        if (ti.ndim == 2 && strcmp(ti.name, "model.embed_tokens.weight"))
            fwd += 2.0 * (double)ti.numel;
    }
    if (c->tie_word_embeddings) fwd += 2.0 * (double)(c->vocab_size * c->hidden_size);
    const size_t np = strlen(c->layer_pattern);
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        if (c->layer_pattern[(size_t)l % np] == 'A')
            fwd += 2.0 * 2.0 * (double)(c->num_attention_heads * c->head_dim) * (double)T / 2.0;
        else
            fwd += 8.0 * (double)(c->linear_num_value_heads * c->linear_key_head_dim *
                                  c->linear_value_head_dim);
    }
    return 3.0 * fwd;
}

typedef struct {
    const train_options *o;
    dn_text_data *text;
} data_src;

static int get_batch(const data_src *s, int validation, uint64_t index, int32_t *tok,
                     int32_t *tgt) {
    const train_options *o = s->o;
    dn_status st;
    if (s->text)
        st = dn_text_data_batch(s->text, validation, o->seed, index, tok, tgt, o->B, o->T);
    else /* validation draws from another stream of the same generator */
        st = dn_mqar_batch(tok, tgt, o->B, o->T, o->mqar_vocab, o->mqar_pairs,
                           o->seed ^ (validation ? 0x5bd1e995ull : 0), index);
    if (st != DN_OK) fprintf(stderr, "train: %s\n", dn_last_error());
    return st == DN_OK ? 0 : -1;
}

/* Mean loss per counted target over eval_batches held-out batches (and MQAR accuracy). */
static double evaluate(dn_model *m, const data_src *s, int32_t *tok, int32_t *tgt, float *logits,
                       double *acc) {
    const train_options *o = s->o;
    double sum = 0;
    int64_t cnt = 0, right = 0;
    for (int64_t b = 0; b < o->eval_batches; b++) {
        double l;
        int64_t n;
        if (get_batch(s, 1, (uint64_t)b, tok, tgt)) return NAN;
        if (dn_model_forward_backward(m, tok, tgt, o->B, o->T, 0.0f, &l, &n) != DN_OK) return NAN;
        sum += l, cnt += n;
        if (acc && dn_model_logits(m, logits, tok, o->B, o->T) == DN_OK) {
            const int64_t V = dn_model_get_config(m)->vocab_size;
            for (int64_t i = 0; i < o->B * o->T; i++) {
                if (tgt[i] < 0) continue;
                int64_t best = 0;
                for (int64_t j = 1; j < V; j++)
                    if (logits[i * V + j] > logits[i * V + best]) best = j;
                right += best == tgt[i];
            }
        }
    }
    if (acc) *acc = cnt ? (double)right / (double)cnt : 0;
    return cnt ? sum / (double)cnt : NAN;
}

static void fmt_time(char *buf, size_t n, double s) {
    if (s < 120)
        snprintf(buf, n, "%.0fs", s);
    else if (s < 7200)
        snprintf(buf, n, "%.0fm%02.0fs", floor(s / 60), fmod(s, 60));
    else
        snprintf(buf, n, "%.0fh%02.0fm", floor(s / 3600), fmod(s / 60, 60));
}

/* JSON string body of s (quotes, backslashes and control bytes escaped) */
static void json_str(char *dst, size_t cap, const char *s) {
    size_t n = 0;
    for (; *s && n + 8 < cap; s++) {
        const unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            dst[n++] = '\\', dst[n++] = (char)ch;
        else if (ch < 0x20)
            n += (size_t)snprintf(dst + n, cap - n, "\\u%04x", ch);
        else
            dst[n++] = (char)ch;
    }
    dst[n] = 0;
}

/* The options that decide the run's numbers, as JSON: saved in the checkpoint, and compared on
 * --resume (a run resumed with other options would not be the same run). */
static void options_json(const train_options *o, char *buf, size_t cap) {
    char data[1024];
    json_str(data, sizeof data, !strcmp(o->task, "text") ? o->data : "");
    snprintf(buf, cap,
             "{\"task\": \"%s\", \"data\": \"%s\", \"batch\": %lld, \"seq\": %lld, "
             "\"accum\": %lld, \"steps\": %lld, \"lr\": %.17g, \"warmup\": %lld, "
             "\"min_lr_ratio\": %.17g, \"weight_decay\": %.17g, \"grad_clip\": %.17g, "
             "\"beta1\": %.17g, \"beta2\": %.17g, \"eps\": %.17g, \"seed\": %llu, "
             "\"mqar_vocab\": %lld, \"mqar_pairs\": %lld, \"decay_init\": [%.17g, %.17g]}",
             o->task, data, (long long)o->B, (long long)o->T, (long long)o->accum,
             (long long)o->steps, o->lr, (long long)o->warmup, o->min_lr_ratio, o->opt.weight_decay,
             o->opt.grad_clip, o->opt.beta1, o->opt.beta2, o->opt.eps, (unsigned long long)o->seed,
             (long long)o->mqar_vocab, (long long)o->mqar_pairs, o->decay_lo, o->decay_hi);
}

static int save_checkpoint(const train_options *o, const dn_model *m, dn_adamw *opt) {
    char path[4096], extra[4096];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", o->out_dir);
    options_json(o, extra, sizeof extra);
    if (dn_checkpoint_save(path, m, opt, extra) != DN_OK) {
        fprintf(stderr, "train: cannot save %s: %s\n", path, dn_last_error());
        return -1;
    }
    return 0;
}

int train_run(const train_options *o, train_result *res) {
    memset(res, 0, sizeof *res);
    if (o->threads > 0) dn_set_num_threads((int)o->threads);
    data_src src = {o, NULL};
    if (!strcmp(o->task, "text") && load_corpus(o->data, &src.text)) return 1;
    dn_model *m = NULL;
    dn_adamw *opt = NULL;
    int64_t first_step = 0;
    if (o->resume) {
        char path[4096], want[4096];
        char *extra = NULL;
        snprintf(path, sizeof path, "%s/checkpoint.safetensors", o->out_dir);
        if (dn_checkpoint_load(path, &m, &opt, &o->opt, &extra) != DN_OK) {
            fprintf(stderr, "train: cannot resume from %s: %s\n", path, dn_last_error());
            dn_text_data_free(src.text);
            return 1;
        }
        options_json(o, want, sizeof want);
        char *cfg = NULL;
        dn_model_config_to_json(&o->model, &cfg);
        char *have = NULL;
        dn_model_config_to_json(dn_model_get_config(m), &have);
        const int same = extra && !strcmp(extra, want) && cfg && have && !strcmp(cfg, have);
        if (!same)
            fprintf(stderr,
                    "train: %s was made with other options or another model; resume with the "
                    "same ones.\n  checkpoint: %s\n             %s\n  now:        %s\n"
                    "             %s\n",
                    path, extra ? extra : "(none)", have ? have : "?", want, cfg ? cfg : "?");
        free(extra), free(cfg), free(have);
        if (!same) {
            dn_adamw_free(opt);
            dn_model_free(m);
            dn_text_data_free(src.text);
            return 1;
        }
        first_step = dn_adamw_get_step(opt);
        if (!o->quiet) printf("resuming from %s at step %lld\n", path, (long long)first_step);
    } else if (dn_model_create(&m, &o->model, o->seed) != DN_OK ||
               (o->decay_lo > 0 &&
                dn_model_init_decay(m, o->decay_lo, o->decay_hi, o->seed) != DN_OK) ||
               dn_adamw_create(&opt, m, &o->opt) != DN_OK) {
        fprintf(stderr, "train: %s\n", dn_last_error());
        dn_model_free(m);
        dn_text_data_free(src.text);
        return 1;
    }
    const int64_t N = o->B * o->T, V = o->model.vocab_size;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)N), *tgt = malloc(sizeof(int32_t) * (size_t)N);
    float *logits = !strcmp(o->task, "mqar") ? malloc(sizeof(float) * (size_t)(N * V)) : NULL;
    double *curve_x = malloc(sizeof(double) * (size_t)(o->steps + 1));
    double *curve_y = malloc(sizeof(double) * (size_t)(o->steps + 1));
    double *eval_x = malloc(sizeof(double) * (size_t)(o->steps / o->eval_every + 2));
    double *eval_y = malloc(sizeof(double) * (size_t)(o->steps / o->eval_every + 2));
    if (!tok || !tgt || (!logits && !strcmp(o->task, "mqar")) || !curve_x || !curve_y || !eval_x ||
        !eval_y) {
        fprintf(stderr, "train: out of memory\n");
        return 1;
    }
    mkdir(o->out_dir, 0777);
    char path[4096];
    snprintf(path, sizeof path, "%s/log.jsonl", o->out_dir);
    FILE *logf = fopen(path, o->resume ? "a" : "w");
    if (!logf) fprintf(stderr, "train: cannot write %s (no JSON log)\n", path);

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    const double flops_tok = train_flops_per_token(m, o->T);
    const double peak =
        o->quiet ? 0 : bench_measure_fma_peak(o->threads > 0 ? (int)o->threads : 0, 0.2);
    if (!o->quiet)
        printf("model: %s x %lld layers, width %lld, %lld parameters; %s task, batch %lld x %lld "
               "x %lld accum; %d threads; peak %.1f GFLOP/s\n",
               o->model.layer_pattern, (long long)o->model.num_hidden_layers,
               (long long)o->model.hidden_size, (long long)dn_model_num_params(m), o->task,
               (long long)o->B, (long long)o->T, (long long)o->accum, dn_get_num_threads(), peak);
    const int tty = isatty(1) && !o->quiet;
    double t0 = now_s(), train_time = 0, loss = NAN;
    int64_t n_eval = 0, step;
    int rc = 0;
    for (step = first_step; step < o->steps && !stop_requested; step++) {
        const double ts = now_s();
        dn_model_zero_grad(m);
        /* the gradient of the mean over every counted target of the step's micro-batches */
        int64_t count = 0;
        for (int64_t a = 0; a < o->accum && rc == 0; a++) {
            rc = get_batch(&src, 0, (uint64_t)(step * o->accum + a), tok, tgt);
            for (int64_t i = 0; i < N; i++)
                count += tgt[i] >= 0;
        }
        double lsum = 0;
        for (int64_t a = 0; a < o->accum && rc == 0; a++) {
            double l = 0;
            rc = get_batch(&src, 0, (uint64_t)(step * o->accum + a), tok, tgt);
            if (rc == 0 &&
                dn_model_forward_backward(m, tok, tgt, o->B, o->T,
                                          1.0f / (float)(count ? count : 1), &l, NULL) != DN_OK) {
                fprintf(stderr, "train: %s\n", dn_last_error());
                rc = 1;
            }
            lsum += l;
        }
        double gnorm = 0;
        const double lr = dn_lr_at(step, o->warmup, o->steps, o->lr, o->min_lr_ratio);
        if (rc == 0 && dn_adamw_step(opt, m, lr, &gnorm) != DN_OK) {
            fprintf(stderr, "train: step %lld: %s\n", (long long)step, dn_last_error());
            rc = 1;
        }
        if (rc) break;
        loss = lsum / (double)(count ? count : 1);
        train_time += now_s() - ts;
        const int64_t done = step + 1 - first_step; /* steps run in this process */
        curve_x[done - 1] = (double)(step + 1), curve_y[done - 1] = loss;
        const double tps = (double)(done * o->accum * N) / train_time;
        if (tty) {
            char eta[32];
            fmt_time(eta, sizeof eta, (double)(o->steps - step - 1) * train_time / (double)done);
            printf("\r\033[Kstep %lld/%lld  loss %.4f  lr %.2e  |g| %.3f  %.0f tok/s  MFU %.1f%%  "
                   "ETA %s",
                   (long long)step + 1, (long long)o->steps, loss, lr, gnorm, tps,
                   peak > 0 ? 100.0 * tps * flops_tok / (peak * 1e9) : 0.0, eta);
            fflush(stdout);
        }
        if ((step + 1) % o->eval_every == 0 || step + 1 == o->steps) {
            double acc = 0;
            const double vl =
                o->eval_batches ? evaluate(m, &src, tok, tgt, logits, logits ? &acc : NULL) : NAN;
            eval_x[n_eval] = (double)(step + 1), eval_y[n_eval++] = vl;
            if (!o->quiet) {
                printf("%sstep %lld  train %.4f  val %.4f (%.3f bits/%s)", tty ? "\r\033[K" : "",
                       (long long)step + 1, loss, vl, vl / log(2.0), logits ? "answer" : "byte");
                if (logits) printf("  accuracy %.1f%%", 100 * acc);
                printf("  %.0f tok/s\n", tps);
            }
            if (logf)
                fprintf(logf,
                        "{\"step\": %lld, \"train_loss\": %.6f, \"val_loss\": %.6f, "
                        "\"val_accuracy\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6g, "
                        "\"tokens_per_s\": %.1f}\n",
                        (long long)step + 1, loss, vl, acc, lr, gnorm, tps);
            if (logf) fflush(logf); /* readable while the run goes on */
            res->val_loss = vl, res->val_accuracy = acc;
        }
        if (o->save_every && (step + 1) % o->save_every == 0 && step + 1 < o->steps &&
            save_checkpoint(o, m, opt)) {
            rc = 1;
            step++;
            break;
        }
    }
    res->steps = step, res->train_loss = loss, res->seconds = now_s() - t0;
    res->tokens_per_s =
        train_time > 0 ? (double)((step - first_step) * o->accum * N) / train_time : 0;
    if (rc == 0 && step > first_step && save_checkpoint(o, m, opt)) rc = 1;
    res->mfu = peak > 0 ? res->tokens_per_s * flops_tok / (peak * 1e9) : 0;
    if (stop_requested && !o->quiet)
        printf("\nstopped by signal after step %lld (checkpoint saved: continue with the same "
               "options and --resume)\n",
               (long long)step);
    if (logf) {
        fprintf(logf,
                "{\"summary\": true, \"pattern\": \"%s\", \"params\": %lld, \"steps\": %lld, "
                "\"train_loss\": %.6f, \"val_loss\": %.6f, \"tokens_per_s\": %.1f, "
                "\"flops_per_token\": %.6g, \"peak_gflops\": %.2f, \"mfu\": %.4f, "
                "\"seconds\": %.2f}\n",
                o->model.layer_pattern, (long long)dn_model_num_params(m), (long long)step, loss,
                res->val_loss, res->tokens_per_s, flops_tok, peak, res->mfu, res->seconds);
        fclose(logf);
    }
    if (step > first_step) {
        svg_series ser[2] = {{"train", curve_x, curve_y, (int)(step - first_step)},
                             {"validation", eval_x, eval_y, (int)n_eval}};
        char note[320];
        snprintf(note, sizeof note, "%s, %lld parameters", o->model.layer_pattern,
                 (long long)dn_model_num_params(m));
        svg_chart ch = {"Training loss", "step", "loss (nats per target)", note, ser, 2};
        snprintf(path, sizeof path, "%s/loss.svg", o->out_dir);
        svg_chart_write(path, &ch);
    }
    if (!o->quiet && step > 0)
        printf("%lld steps in %.1f s: %.0f tokens/s, %.1f%% of the %.1f GFLOP/s FMA peak (model "
               "FLOPs); log %s/log.jsonl, curve %s/loss.svg\n",
               (long long)step, res->seconds, res->tokens_per_s, 100 * res->mfu, peak, o->out_dir,
               o->out_dir);
    free(tok), free(tgt), free(logits), free(curve_x), free(curve_y), free(eval_x), free(eval_y);
    dn_adamw_free(opt);
    dn_model_free(m);
    dn_text_data_free(src.text);
    return rc;
}

int dn_train_main(int argc, char **argv) {
    train_options o;
    train_options_default(&o);
    const int p = train_parse(&o, argc, argv);
    if (p) return p > 0 ? 0 : 2;
    train_result r;
    return train_run(&o, &r);
}
