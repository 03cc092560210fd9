/*
 * recall.c - `deltanet recall`: the multi-query associative recall experiment (the Zoology
 * benchmark's MQAR task). One 2-layer model per mixer and width, trained on a mixture of
 * (sequence length, pairs) slices, then its accuracy on held-out sequences of every slice,
 * including longer and fuller ones than it trained on. Reported: accuracy per mixer and slice,
 * state bytes per sequence, parameters, training time and steps; a table, JSON and an SVG chart.
 */
#include "recall.h"
#include "bench.h"
#include "opts.h"
#include "svg.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int64_t T, pairs;
} slice;

/* Training mixture and evaluation slices (T >= 4 pairs, pairs from 8 to 128, T up to 512). */
static const slice train_slices[] = {{64, 8}, {64, 16}, {128, 16}, {128, 32}, {256, 32}, {256, 64}};
static const slice eval_slices[] = {{64, 8},   {64, 16},  {128, 16}, {128, 32},
                                    {256, 32}, {256, 64}, {512, 64}, {512, 128}};
#define N_TRAIN (int)(sizeof train_slices / sizeof train_slices[0])
#define N_EVAL (int)(sizeof eval_slices / sizeof eval_slices[0])
#define MAX_RUNS 16

static const struct {
    char letter;
    const char *name;
} mixers[] = {{'A', "attention"},
              {'G', "gated_deltanet"},
              {'D', "deltanet"},
              {'L', "linear_attn"},
              {'M', "mamba2"}};
#define N_MIXERS (int)(sizeof mixers / sizeof mixers[0])

typedef struct {
    const char *mixers; /* letters */
    int64_t widths[2];
    int n_widths;
    int64_t steps, batch_tokens, eval_seqs, vocab, threads;
    double lr, decay_lo, decay_hi; /* peak learning rate; the gated heads' initial decay range */
    int64_t attn_conv;             /* attention models' q/k/v convolution width (0: none) */
    uint64_t seed;
    int64_t ckpt_every, stop_after;
    const char *out_dir;
    int quiet, resume;
} recall_opts;

typedef struct {
    char mixer;
    int64_t width, params, steps;
    double acc[N_EVAL], seconds, state_bytes, final_loss;
    /* accuracy on the pairs of each quarter of the context's pair list, oldest first (every
     * slice has a multiple of 4 pairs, so each quarter holds a quarter of the queries) */
    double acc_q[N_EVAL][4];
} recall_run;

static volatile sig_atomic_t stop_flag;
static void on_sig(int s) {
    (void)s;
    stop_flag = 1;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static const char *mixer_name(char c) {
    for (int i = 0; i < N_MIXERS; i++)
        if (mixers[i].letter == c) return mixers[i].name;
    return "?";
}

static void usage(void) {
    printf("usage: deltanet recall [options]\n"
           "Multi-query associative recall (MQAR, as in the Zoology benchmark): one 2-layer\n"
           "model per mixer and width trained on a mixture of (length, pairs) slices, accuracy\n"
           "on held-out sequences per slice.\n"
           "  --mixers STR      letters: A attention, G Gated DeltaNet, D DeltaNet, L linear\n"
           "                    attention, M Mamba-2 (default AGDLM)\n"
           "  --widths LIST     model widths, heads of 64 (default 64,128)\n"
           "  --steps N         training steps per model (default 200: the whole run in about 20\n"
           "                    minutes on 2 cores; MQAR needs thousands: see --full)\n"
           "  --batch-tokens N  tokens per step (default 8192)\n"
           "  --lr X            peak learning rate (default 3e-3)\n"
           "  --decay-init LO,HI  initial decay per token of the gated heads (G, M) in [LO, HI]\n"
           "                    (default 0.99,0.999)\n"
           "  --attn-conv W     attention models (A) with a causal depthwise convolution of\n"
           "                    width W (2-4) over q, k and v, as the recurrent mixers have\n"
           "                    (default 0: none, Qwen3.5's attention)\n"
           "  --eval-seqs N     held-out sequences per slice (default 256)\n"
           "  --vocab V         (default 8192)\n"
           "  --full            the long run: 4000 steps of 16384 tokens\n"
           "  --resume          continue the run in --out (same options): finished models are\n"
           "                    kept, the interrupted one goes on from its last checkpoint,\n"
           "                    bit-identically (SIGINT / SIGTERM save one and stop)\n"
           "  --ckpt-every N    checkpoint the model in training every N steps (default 250)\n"
           "  --stop-after N    stop as SIGINT would after N steps of this invocation (testing)\n"
           "  --seed N --threads N --out DIR (default deltanet-recall) --quiet\n"
           "deltanet recall --merge DIR... [--out DIR] [--quiet]\n"
           "  the runs of several directories made with the same options but the seed: per\n"
           "  mixer and width, the mean, lowest and highest accuracy per slice over the seeds\n"
           "  (--out: merged.txt and merged.tsv there)\n");
}

static int parse(recall_opts *o, int argc, char **argv) {
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
        if (!strcmp(a, "--full")) {
            o->steps = 4000, o->batch_tokens = 16384;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "recall: option %s needs a value (see --help)\n", a);
            return -1;
        }
        const char *v = argv[++i];
        int64_t n = 0;
        int r = 0;
        if (!strcmp(a, "--mixers")) {
            if (!*v || strspn(v, "AGDLM") != strlen(v) || strlen(v) > 5) {
                fprintf(stderr, "recall: --mixers takes letters of AGDLM\n");
                return -1;
            }
            o->mixers = v;
        } else if (!strcmp(a, "--widths")) {
            r = opt_i64_list("recall", a, v, 64, 4096, o->widths, 2);
            for (int w = 0; w < r; w++)
                if (o->widths[w] % 64) {
                    fprintf(stderr, "recall: widths are multiples of 64 (heads of 64)\n");
                    return -1;
                }
            o->n_widths = r > 0 ? r : 0;
            r = r > 0 ? 0 : -1;
        } else if (!strcmp(a, "--out"))
            o->out_dir = v;
        else if (!strcmp(a, "--lr"))
            r = opt_f64("recall", a, v, 1e-9, 1, &o->lr);
        else if (!strcmp(a, "--decay-init")) {
            double d[2];
            r = opt_f64_pair("recall", a, v, 1e-9, 0.999999, d);
            if (!r) o->decay_lo = d[0], o->decay_hi = d[1];
        } else if (!strcmp(a, "--seed")) {
            r = opt_i64("recall", a, v, 0, INT64_MAX, &n);
            if (!r) o->seed = (uint64_t)n;
        } else if (!strcmp(a, "--steps"))
            r = opt_i64("recall", a, v, 1, (int64_t)1 << 40, &o->steps);
        else if (!strcmp(a, "--batch-tokens"))
            r = opt_i64("recall", a, v, 512, (int64_t)1 << 24, &o->batch_tokens);
        else if (!strcmp(a, "--attn-conv")) {
            r = opt_i64("recall", a, v, 0, 4, &o->attn_conv);
            if (!r && o->attn_conv == 1) {
                fprintf(stderr, "recall: --attn-conv is 0 (none) or a width of 2 to 4\n");
                r = -1;
            }
        } else if (!strcmp(a, "--eval-seqs"))
            r = opt_i64("recall", a, v, 8, 1 << 20, &o->eval_seqs);
        else if (!strcmp(a, "--vocab"))
            r = opt_i64("recall", a, v, 512, 1 << 20, &o->vocab);
        else if (!strcmp(a, "--ckpt-every"))
            r = opt_i64("recall", a, v, 1, (int64_t)1 << 40, &o->ckpt_every);
        else if (!strcmp(a, "--stop-after"))
            r = opt_i64("recall", a, v, 1, (int64_t)1 << 40, &o->stop_after);
        else if (!strcmp(a, "--threads"))
            r = opt_i64("recall", a, v, 1, 1024, &o->threads);
        else {
            fprintf(stderr, "recall: unknown option %s (see --help)\n", a);
            return -1;
        }
        if (r) return -1;
    }
    return 0;
}

/* The model of one run: 2 layers of the mixer, heads of 64, MLP 2x wide. The gated mixers'
 * heads start with a decay per token in [decay_lo, decay_hi] (dn_model_init_decay; default
 * [0.99, 0.999]): with the default Mamba-2 init a head may start at 0.2 and forget a key before
 * its query arrives. */
static dn_model_config run_config(char mixer, int64_t width, int64_t vocab, int64_t attn_conv) {
    dn_model_config c = dn_model_config_default();
    c.vocab_size = vocab, c.hidden_size = width, c.num_hidden_layers = 2;
    c.intermediate_size = 2 * width;
    c.layer_pattern[0] = mixer, c.layer_pattern[1] = 0;
    const int64_t heads = width / 64;
    c.num_attention_heads = c.num_key_value_heads = heads, c.head_dim = 64;
    c.linear_num_key_heads = c.linear_num_value_heads = heads;
    c.linear_key_head_dim = c.linear_value_head_dim = 64;
    c.tie_word_embeddings = 1;
    c.attn_conv_kernel_dim = attn_conv;
    return c;
}

/* The options that decide a run's numbers: in every checkpoint and in runs.tsv, compared on
 * --resume (a run continued with other options would not be the same run). */
static void settings(const recall_opts *o, char *buf, size_t cap) {
    int w = snprintf(buf, cap,
                     "vocab=%lld steps=%lld batch_tokens=%lld lr=%.17g seed=%llu eval_seqs=%lld",
                     (long long)o->vocab, (long long)o->steps, (long long)o->batch_tokens, o->lr,
                     (unsigned long long)o->seed, (long long)o->eval_seqs);
    /* a decay range other than the default only (runs from before the option still resume) */
    if ((o->decay_lo != 0.99 || o->decay_hi != 0.999) && w > 0 && (size_t)w < cap)
        w += snprintf(buf + w, cap - (size_t)w, " decay=%.17g,%.17g", o->decay_lo, o->decay_hi);
    if (o->attn_conv && w > 0 && (size_t)w < cap)
        snprintf(buf + w, cap - (size_t)w, " attn_conv=%lld", (long long)o->attn_conv);
}

static void ckpt_path(const recall_opts *o, char mixer, int64_t width, char *buf, size_t cap) {
    snprintf(buf, cap, "%s/train-%c%lld.safetensors", o->out_dir, mixer, (long long)width);
}

/* The model in training with its optimizer, step and seconds so far: saved as a checkpoint whose
 * extra JSON holds the settings, mixer, width and seconds. */
static int save_ckpt(const recall_opts *o, char mixer, int64_t width, const dn_model *m,
                     dn_adamw *opt, double seconds) {
    char path[4096], set[512], extra[1024];
    ckpt_path(o, mixer, width, path, sizeof path);
    settings(o, set, sizeof set);
    snprintf(extra, sizeof extra, "{\"recall\": \"%s mixer=%c width=%lld\", \"seconds\": %.17g}",
             set, mixer, (long long)width, seconds);
    if (dn_checkpoint_save(path, m, opt, extra) != DN_OK) {
        fprintf(stderr, "recall: cannot save %s: %s\n", path, dn_last_error());
        return -1;
    }
    return 0;
}

/* --resume: the checkpoint of this model when there is one (0: none, 1: loaded, -1: error). */
static int load_ckpt(const recall_opts *o, char mixer, int64_t width, const dn_adamw_config *oc,
                     dn_model **m, dn_adamw **opt, double *seconds) {
    char path[4096], set[512], want[1024];
    ckpt_path(o, mixer, width, path, sizeof path);
    if (access(path, F_OK) != 0) return 0;
    char *extra = NULL;
    if (dn_checkpoint_load(path, m, opt, oc, &extra) != DN_OK) {
        fprintf(stderr, "recall: cannot resume from %s: %s\n", path, dn_last_error());
        return -1;
    }
    settings(o, set, sizeof set);
    snprintf(want, sizeof want, "{\"recall\": \"%s mixer=%c width=%lld\", \"seconds\": ", set,
             mixer, (long long)width);
    const size_t n = strlen(want);
    if (!extra || strncmp(extra, want, n) != 0 || sscanf(extra + n, "%lf", seconds) != 1) {
        fprintf(stderr,
                "recall: %s was made with other options; resume with the same ones.\n"
                "  checkpoint: %s\n  now:        %s...\n",
                path, extra ? extra : "(none)", want);
        free(extra);
        dn_adamw_free(*opt), dn_model_free(*m);
        *opt = NULL, *m = NULL;
        return -1;
    }
    free(extra);
    return 1;
}

static int64_t steps_this_run; /* for --stop-after */

/* Trains (or continues) one model and evaluates it. 0: r is filled; 1: stopped by a signal or
 * --stop-after with a checkpoint saved; -1: error. */
static int train_one(const recall_opts *o, char mixer, int64_t width, recall_run *r) {
    memset(r, 0, sizeof *r);
    r->mixer = mixer, r->width = width;
    dn_model_config c = run_config(mixer, width, o->vocab, o->attn_conv);
    dn_model *m = NULL;
    dn_adamw *opt = NULL;
    dn_adamw_config oc = dn_adamw_config_default();
    double seconds_before = 0;
    const int got = o->resume ? load_ckpt(o, mixer, width, &oc, &m, &opt, &seconds_before) : 0;
    if (got < 0) return -1;
    if (!got && (dn_model_create(&m, &c, o->seed) != DN_OK ||
                 dn_model_init_decay(m, o->decay_lo, o->decay_hi, o->seed) != DN_OK ||
                 dn_adamw_create(&opt, m, &oc) != DN_OK)) {
        fprintf(stderr, "recall: %s\n", dn_last_error());
        dn_model_free(m);
        return -1;
    }
    r->params = dn_model_num_params(m);
    const int64_t first = dn_adamw_get_step(opt);
    if (got && !o->quiet)
        printf("%s width %lld: resuming at step %lld\n", mixer_name(mixer), (long long)width,
               (long long)first);
    const int64_t maxT = eval_slices[N_EVAL - 1].T;
    const int64_t maxN = o->batch_tokens > maxT * 8 ? o->batch_tokens : maxT * 8;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)maxN),
            *tgt = malloc(sizeof(int32_t) * (size_t)maxN);
    float *logits = malloc(sizeof(float) * (size_t)(8 * maxT) * (size_t)o->vocab);
    int32_t *pair_of = malloc(sizeof(int32_t) * (size_t)o->vocab); /* key token -> pair index */
    int ret = -1;
    if (!tok || !tgt || !logits || !pair_of) {
        fprintf(stderr, "recall: out of memory\n");
        goto done;
    }
    const double t0 = now_s();
    double loss = NAN;
    int64_t step;
    for (step = first; step < o->steps; step++) {
        if (stop_flag || (o->stop_after && steps_this_run >= o->stop_after)) {
            ret = save_ckpt(o, mixer, width, m, opt, seconds_before + now_s() - t0) ? -1 : 1;
            goto done;
        }
        const slice s = train_slices[step % N_TRAIN];
        const int64_t B = o->batch_tokens / s.T;
        double l = 0;
        int64_t n = 0;
        dn_model_zero_grad(m);
        if (dn_mqar_batch(tok, tgt, B, s.T, o->vocab, s.pairs, o->seed, (uint64_t)step) != DN_OK ||
            dn_model_forward_backward(m, tok, tgt, B, s.T, 1.0f / (float)(B * s.pairs), &l, &n) !=
                DN_OK ||
            dn_adamw_step(opt, m, dn_lr_at(step, o->steps / 10, o->steps, o->lr, 0.1), NULL) !=
                DN_OK) {
            fprintf(stderr, "recall: step %lld: %s\n", (long long)step, dn_last_error());
            goto done;
        }
        steps_this_run++;
        loss = l / (double)n;
        if (step + 1 < o->steps && (step + 1) % o->ckpt_every == 0 &&
            save_ckpt(o, mixer, width, m, opt, seconds_before + now_s() - t0))
            goto done;
        if (!o->quiet && !isatty(1) && (step + 1) % 100 == 0) { /* a log: a line a 100 steps */
            const double el = now_s() - t0, done_here = (double)(step + 1 - first);
            printf("  %s width %lld step %lld/%lld loss %.4f %.0f tok/s\n", mixer_name(mixer),
                   (long long)width, (long long)step + 1, (long long)o->steps, loss,
                   done_here * (double)o->batch_tokens / el);
            fflush(stdout);
        }
        if (!o->quiet && isatty(1) && (step % 10 == 0 || step + 1 == o->steps)) {
            const double el = now_s() - t0, done_here = (double)(step + 1 - first);
            printf("\r\033[K  %-15s width %-4lld step %lld/%lld  loss %.3f  %.0f tok/s  ETA %.0fs",
                   mixer_name(mixer), (long long)width, (long long)step + 1, (long long)o->steps,
                   loss, done_here * (double)o->batch_tokens / el,
                   el / done_here * (double)(o->steps - step - 1));
            fflush(stdout);
        }
    }
    r->steps = step, r->seconds = seconds_before + now_s() - t0, r->final_loss = loss;
    /* held-out sequences: another seed stream, 8 sequences per call */
    for (int e = 0; e < N_EVAL; e++) {
        const slice s = eval_slices[e];
        int64_t right = 0, total = 0, right_q[4] = {0}, total_q[4] = {0};
        for (int64_t done = 0; done < o->eval_seqs; done += 8) {
            const int64_t B = 8;
            dn_mqar_batch(tok, tgt, B, s.T, o->vocab, s.pairs, o->seed ^ 0xE7A1u, (uint64_t)done);
            if (dn_model_logits(m, logits, tok, B, s.T) != DN_OK) break;
            for (int64_t b = 0; b < B; b++) {
                /* the pairs come first, key then value, oldest first (dn_mqar_batch) */
                for (int64_t p = 0; p < s.pairs; p++)
                    pair_of[tok[b * s.T + 2 * p]] = (int32_t)p;
                for (int64_t i = b * s.T; i < (b + 1) * s.T; i++) {
                    if (tgt[i] < 0) continue;
                    const float *z = logits + i * o->vocab;
                    int64_t best = 0;
                    for (int64_t j = 1; j < o->vocab; j++)
                        if (z[j] > z[best]) best = j;
                    const int q = (int)(4 * pair_of[tok[i]] / s.pairs);
                    right += best == tgt[i], total++;
                    right_q[q] += best == tgt[i], total_q[q]++;
                }
            }
        }
        r->acc[e] = total ? (double)right / (double)total : 0;
        for (int q = 0; q < 4; q++)
            r->acc_q[e][q] = total_q[q] ? (double)right_q[q] / (double)total_q[q] : 0;
    }
    dn_model_state *st = NULL;
    size_t fixed = 0, kv = 0;
    if (dn_model_state_create(&st, m, 1, maxT) == DN_OK) {
        /* the state after a 512-token sequence: fixed for the recurrent mixers, the KV cache for
         * attention (grows with the length) */
        dn_mqar_batch(tok, tgt, 1, maxT, o->vocab, 64, o->seed, 0);
        if (dn_model_step(m, st, logits, tok, maxT, 0) == DN_OK)
            dn_model_state_bytes(st, &fixed, &kv);
        dn_model_state_free(st);
    }
    r->state_bytes = (double)(fixed + kv);
    ret = 0;
done:
    free(tok), free(tgt), free(logits), free(pair_of);
    dn_adamw_free(opt);
    dn_model_free(m);
    return ret;
}

/* "T256/64": slice e's length and number of pairs */
static const char *slice_name(char *h, size_t cap, int e) {
    snprintf(h, cap, "T%lld/%lld", (long long)eval_slices[e].T, (long long)eval_slices[e].pairs);
    return h;
}

/* Accuracy by where the queried pair sits in the context: the header (under a title), then a
 * line per slice of one model (or of a mean over seeds), the four quarters of the pair list,
 * oldest first (a state that overwrites old pairs loses the first quarters; one that decays them
 * loses them too; uniform interference spreads its losses). */
static void quarters_header(FILE *f, const char *title) {
    fprintf(f, "%s\n%-15s %5s %9s %8s %8s %8s %8s\n", title, "mixer", "width", "slice", "Q1", "Q2",
            "Q3", "Q4");
}
static void quarters_rows(FILE *f, char mixer, int64_t width, const double (*q)[4]) {
    for (int e = 0; e < N_EVAL; e++) {
        char h[24];
        fprintf(f, "%-15s %5lld %9s", mixer_name(mixer), (long long)width,
                slice_name(h, sizeof h, e));
        for (int k = 0; k < 4; k++)
            fprintf(f, " %7.1f%%", 100 * q[e][k]);
        fprintf(f, "\n");
    }
}

static void print_table(FILE *f, const recall_run *runs, int n) {
    fprintf(f, "%-15s %5s %8s %10s", "mixer", "width", "params", "state@512");
    for (int e = 0; e < N_EVAL; e++) {
        char h[24];
        fprintf(f, " %8s", slice_name(h, sizeof h, e));
    }
    fprintf(f, " %7s %6s\n", "train_s", "steps");
    for (int i = 0; i < n; i++) {
        const recall_run *r = &runs[i];
        fprintf(f, "%-15s %5lld %8lld %9.0fK", mixer_name(r->mixer), (long long)r->width,
                (long long)r->params, r->state_bytes / 1024);
        for (int e = 0; e < N_EVAL; e++)
            fprintf(f, " %7.1f%%", 100 * r->acc[e]);
        fprintf(f, " %7.0f %6lld\n", r->seconds, (long long)r->steps);
    }
}

static void print_quarters(FILE *f, const recall_run *runs, int n) {
    quarters_header(
        f, "accuracy by the pair's place in the context (quarters of the pairs, oldest first)");
    for (int i = 0; i < n; i++)
        quarters_rows(f, runs[i].mixer, runs[i].width, runs[i].acc_q);
}

/* runs.tsv: the settings on the first line, then one finished model per line (exact values, so
 * that a resumed run reports the same numbers as one run straight through). */
static int append_run(const recall_opts *o, const recall_run *r, int first) {
    char path[4096], set[512];
    snprintf(path, sizeof path, "%s/runs.tsv", o->out_dir);
    FILE *f = fopen(path, first ? "w" : "a");
    if (!f) {
        fprintf(stderr, "recall: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    settings(o, set, sizeof set);
    if (first) fprintf(f, "%s\n", set);
    if (r) {
        fprintf(f, "%c\t%lld\t%lld\t%lld\t%.17g\t%.17g\t%.17g", r->mixer, (long long)r->width,
                (long long)r->params, (long long)r->steps, r->seconds, r->state_bytes,
                r->final_loss);
        for (int e = 0; e < N_EVAL; e++)
            fprintf(f, "\t%.17g", r->acc[e]);
        for (int e = 0; e < N_EVAL; e++)
            for (int q = 0; q < 4; q++)
                fprintf(f, "\t%.17g", r->acc_q[e][q]);
        fprintf(f, "\n");
    }
    return fclose(f) ? -1 : 0;
}

/* The finished models of dir/runs.tsv and its settings line (without the newline, in set):
 * their number, or -1 when the file is missing, unreadable or malformed. */
static int read_runs(const char *dir, char *set, size_t set_cap, recall_run *runs, int cap) {
    char path[4096], line[2048];
    snprintf(path, sizeof path, "%s/runs.tsv", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "recall: cannot read %s: %s\n", path, strerror(errno));
        return -1;
    }
    int n = 0;
    if (!fgets(line, sizeof line, f)) {
        fprintf(stderr, "recall: %s is empty\n", path);
        fclose(f);
        return -1;
    }
    line[strcspn(line, "\n")] = 0;
    snprintf(set, set_cap, "%s", line);
    while (fgets(line, sizeof line, f)) {
        recall_run *r = &runs[n];
        long long w, p, st;
        int used = 0;
        memset(r, 0, sizeof *r);
        if (n >= cap || sscanf(line, " %c %lld %lld %lld %lf %lf %lf%n", &r->mixer, &w, &p, &st,
                               &r->seconds, &r->state_bytes, &r->final_loss, &used) != 7) {
            fprintf(stderr, "recall: %s: malformed line %d\n", path, n + 2);
            fclose(f);
            return -1;
        }
        const char *q = line + used;
        for (int e = 0; e < N_EVAL; e++) {
            int k = 0;
            if (sscanf(q, " %lf%n", &r->acc[e], &k) != 1) {
                fprintf(stderr, "recall: %s: malformed line %d\n", path, n + 2);
                fclose(f);
                return -1;
            }
            q += k;
        }
        /* the quarters (runs.tsv files from before them lack them: NaN) */
        for (int e = 0; e < N_EVAL; e++)
            for (int h = 0; h < 4; h++) {
                int k = 0;
                if (sscanf(q, " %lf%n", &r->acc_q[e][h], &k) != 1) r->acc_q[e][h] = NAN;
                q += k;
            }
        r->width = w, r->params = p, r->steps = st;
        n++;
    }
    fclose(f);
    return n;
}

/* --resume: the finished models of runs.tsv (-1 when it is missing, unreadable or was made
 * with other settings). */
static int load_runs(const recall_opts *o, recall_run *runs, int cap) {
    char set[512], had[2048];
    const int n = read_runs(o->out_dir, had, sizeof had, runs, cap);
    if (n < 0) return -1;
    settings(o, set, sizeof set);
    if (strcmp(had, set) != 0) {
        fprintf(stderr,
                "recall: %s/runs.tsv was made with other options; resume with the same "
                "ones.\n",
                o->out_dir);
        return -1;
    }
    return n;
}

static void write_outputs(const recall_opts *o, const recall_run *runs, int n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/recall.txt", o->out_dir);
    FILE *f = fopen(path, "w");
    if (f) {
        print_table(f, runs, n);
        fprintf(f, "\n");
        print_quarters(f, runs, n);
        fclose(f);
    }
    snprintf(path, sizeof path, "%s/recall.json", o->out_dir);
    if ((f = fopen(path, "w"))) {
        fprintf(f,
                "{\"vocab\": %lld, \"steps\": %lld, \"batch_tokens\": %lld, \"lr\": %g, "
                "\"decay_init\": [%g, %g], \"attn_conv\": %lld, \"isa\": \"%s\", \"runs\": [\n",
                (long long)o->vocab, (long long)o->steps, (long long)o->batch_tokens, o->lr,
                o->decay_lo, o->decay_hi, (long long)o->attn_conv, dn_isa_name(dn_isa_active()));
        for (int i = 0; i < n; i++) {
            const recall_run *r = &runs[i];
            fprintf(f,
                    "  {\"mixer\": \"%s\", \"width\": %lld, \"params\": %lld, \"state_bytes\": "
                    "%.0f, \"train_seconds\": %.1f, \"steps\": %lld, \"final_loss\": %.4f, "
                    "\"accuracy\": {",
                    mixer_name(r->mixer), (long long)r->width, (long long)r->params, r->state_bytes,
                    r->seconds, (long long)r->steps, r->final_loss);
            for (int e = 0; e < N_EVAL; e++)
                fprintf(f, "%s\"T%lld_pairs%lld\": %.4f", e ? ", " : "",
                        (long long)eval_slices[e].T, (long long)eval_slices[e].pairs, r->acc[e]);
            fprintf(f, "}, \"accuracy_by_quarter\": {");
            for (int e = 0; e < N_EVAL; e++) {
                fprintf(f, "%s\"T%lld_pairs%lld\": [", e ? ", " : "", (long long)eval_slices[e].T,
                        (long long)eval_slices[e].pairs);
                for (int q = 0; q < 4; q++) /* NaN (a runs.tsv from before them): null */
                    if (isnan(r->acc_q[e][q]))
                        fprintf(f, "%snull", q ? ", " : "");
                    else
                        fprintf(f, "%s%.4f", q ? ", " : "", r->acc_q[e][q]);
                fprintf(f, "]");
            }
            fprintf(f, "}}%s\n", i + 1 < n ? "," : "");
        }
        fprintf(f, "]}\n");
        fclose(f);
    }
    /* chart: accuracy against pairs at T = 256 and 512 slices, one series per run */
    static double xs[MAX_RUNS][N_EVAL], ys[MAX_RUNS][N_EVAL];
    static char names[MAX_RUNS][48];
    svg_series ser[MAX_RUNS];
    for (int i = 0; i < n; i++) {
        int k = 0;
        for (int e = 0; e < N_EVAL; e++)
            if (eval_slices[e].T >= 256)
                xs[i][k] = (double)eval_slices[e].pairs, ys[i][k++] = 100 * runs[i].acc[e] + 0.1;
        snprintf(names[i], sizeof names[i], "%s d=%lld", mixer_name(runs[i].mixer),
                 (long long)runs[i].width);
        ser[i] = (svg_series){names[i], xs[i], ys[i], k};
    }
    svg_chart ch = {"MQAR accuracy at T = 256 and 512",
                    "key-value pairs",
                    "accuracy (%)",
                    "2 layers, heads of 64; vocab 8192",
                    ser,
                    n};
    snprintf(path, sizeof path, "%s/recall.svg", o->out_dir);
    svg_chart_write(path, &ch);
}

/* --merge: several runs of the same options but the seed (one directory a seed), per mixer and
 * width: the mean, lowest and highest accuracy per slice over the seeds, and the quarters'
 * means. MQAR's sudden transition makes single runs move by tens of points with the seed (and
 * with the machine's rounding), so a ranking where the state fills needs this. */
#define MAX_MERGE 32
typedef struct {
    char mixer;
    int64_t width, params;
    int n;
    double state_bytes, mean[N_EVAL], lo[N_EVAL], hi[N_EVAL], q[N_EVAL][4];
} merged_run;

/* settings without their seed (into base) and the seed; -1 when there is none */
static int split_seed(const char *set, char *base, size_t cap, unsigned long long *seed) {
    const char *at = strstr(set, " seed=");
    if (!at || sscanf(at + 6, "%llu", seed) != 1) return -1;
    const char *rest = strchr(at + 1, ' ');
    snprintf(base, cap, "%.*s%s", (int)(at - set), set, rest ? rest : "");
    return 0;
}

static void print_merged(FILE *f, const merged_run *g, int ng, const char *seeds) {
    fprintf(f, "mean accuracy over seeds %s (lowest-highest below)\n", seeds);
    fprintf(f, "%-15s %5s %5s %10s", "mixer", "width", "seeds", "state@512");
    for (int e = 0; e < N_EVAL; e++) {
        char h[24];
        fprintf(f, " %11s", slice_name(h, sizeof h, e));
    }
    fprintf(f, "\n");
    for (int i = 0; i < ng; i++) {
        fprintf(f, "%-15s %5lld %5d %9.0fK", mixer_name(g[i].mixer), (long long)g[i].width, g[i].n,
                g[i].state_bytes / 1024);
        for (int e = 0; e < N_EVAL; e++)
            fprintf(f, " %10.1f%%", 100 * g[i].mean[e]);
        fprintf(f, "\n%-15s %5s %5s %10s", "", "", "", "");
        for (int e = 0; e < N_EVAL; e++)
            fprintf(f, " %5.1f-%5.1f", 100 * g[i].lo[e], 100 * g[i].hi[e]);
        fprintf(f, "\n");
    }
    fprintf(f, "\n");
    quarters_header(f, "mean accuracy by the pair's place in the context (quarters, oldest first)");
    for (int i = 0; i < ng; i++)
        quarters_rows(f, g[i].mixer, g[i].width, g[i].q);
}

static int merge_main(int argc, char **argv) {
    const char *dirs[MAX_MERGE], *out = NULL;
    int nd = 0, quiet = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc) {
            out = argv[++i];
        } else if (!strcmp(argv[i], "--quiet")) {
            quiet = 1;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "recall --merge: unknown option %s (see --help)\n", argv[i]);
            return 2;
        } else if (nd == MAX_MERGE) {
            fprintf(stderr, "recall --merge: at most %d directories\n", MAX_MERGE);
            return 2;
        } else {
            dirs[nd++] = argv[i];
        }
    }
    if (nd < 1) {
        fprintf(stderr, "recall --merge: name the directories of the runs to merge\n");
        return 2;
    }
    static recall_run runs[MAX_RUNS];
    static merged_run g[MAX_RUNS];
    unsigned long long seeds[MAX_MERGE];
    char base0[2048] = "", seedlist[MAX_MERGE * 24] = "";
    int ng = 0;
    size_t sl = 0;
    for (int d = 0; d < nd; d++) {
        char set[2048], base[2048];
        const int n = read_runs(dirs[d], set, sizeof set, runs, MAX_RUNS);
        if (n < 0) return 1;
        if (split_seed(set, base, sizeof base, &seeds[d]) != 0) {
            fprintf(stderr, "recall --merge: %s/runs.tsv has no seed in its settings\n", dirs[d]);
            return 1;
        }
        if (d == 0) snprintf(base0, sizeof base0, "%s", base);
        if (strcmp(base, base0) != 0) {
            fprintf(stderr,
                    "recall --merge: %s was made with other options than %s (only the seed may "
                    "differ):\n  %s\n  %s\n",
                    dirs[d], dirs[0], base, base0);
            return 1;
        }
        for (int e = 0; e < d; e++)
            if (seeds[e] == seeds[d]) {
                fprintf(stderr, "recall --merge: %s and %s both hold seed %llu\n", dirs[e], dirs[d],
                        seeds[d]);
                return 1;
            }
        sl +=
            (size_t)snprintf(seedlist + sl, sizeof seedlist - sl, "%s%llu", d ? "," : "", seeds[d]);
        for (int i = 0; i < n; i++) {
            const recall_run *r = &runs[i];
            int k = 0;
            while (k < ng && (g[k].mixer != r->mixer || g[k].width != r->width))
                k++;
            if (k == ng) {
                if (ng == MAX_RUNS) {
                    fprintf(stderr, "recall --merge: more than %d models\n", MAX_RUNS);
                    return 1;
                }
                memset(&g[ng], 0, sizeof g[ng]);
                g[ng].mixer = r->mixer, g[ng].width = r->width, g[ng].params = r->params;
                g[ng].state_bytes = r->state_bytes;
                for (int e = 0; e < N_EVAL; e++)
                    g[ng].lo[e] = INFINITY, g[ng].hi[e] = -INFINITY;
                ng++;
            }
            merged_run *m = &g[k];
            m->n++;
            for (int e = 0; e < N_EVAL; e++) {
                m->mean[e] += r->acc[e];
                m->lo[e] = fmin(m->lo[e], r->acc[e]), m->hi[e] = fmax(m->hi[e], r->acc[e]);
                for (int q = 0; q < 4; q++)
                    m->q[e][q] += r->acc_q[e][q]; /* NaN where a run lacks them */
            }
        }
    }
    for (int k = 0; k < ng; k++)
        for (int e = 0; e < N_EVAL; e++) {
            g[k].mean[e] /= g[k].n;
            for (int q = 0; q < 4; q++)
                g[k].q[e][q] /= g[k].n;
        }
    if (!quiet) print_merged(stdout, g, ng, seedlist);
    if (!out) return 0;
    if (mkdir(out, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "recall --merge: cannot create %s: %s\n", out, strerror(errno));
        return 1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/merged.txt", out);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "recall --merge: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    print_merged(f, g, ng, seedlist);
    int bad = fclose(f) != 0;
    /* merged.tsv: the settings and seeds, then per mixer and width its seeds and, per slice,
     * the mean, lowest and highest accuracy (exact values) */
    snprintf(path, sizeof path, "%s/merged.tsv", out);
    if (!(f = fopen(path, "w"))) {
        fprintf(stderr, "recall --merge: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    fprintf(f, "%s seeds=%s\n", base0, seedlist);
    for (int k = 0; k < ng; k++) {
        fprintf(f, "%c\t%lld\t%lld\t%d", g[k].mixer, (long long)g[k].width, (long long)g[k].params,
                g[k].n);
        for (int e = 0; e < N_EVAL; e++)
            fprintf(f, "\t%.17g\t%.17g\t%.17g", g[k].mean[e], g[k].lo[e], g[k].hi[e]);
        fprintf(f, "\n");
    }
    bad |= fclose(f) != 0;
    if (bad) fprintf(stderr, "recall --merge: cannot write to %s\n", out);
    return bad;
}

int dn_recall_main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--merge")) return merge_main(argc, argv);
    recall_opts o = {.mixers = "AGDLM",
                     .widths = {64, 128},
                     .n_widths = 2,
                     .steps = 200,
                     .batch_tokens = 8192,
                     .eval_seqs = 256,
                     .vocab = 8192,
                     .lr = 3e-3,
                     .decay_lo = 0.99,
                     .decay_hi = 0.999,
                     .seed = 7,
                     .ckpt_every = 250,
                     .out_dir = "deltanet-recall"};
    const int p = parse(&o, argc, argv);
    if (p) return p > 0 ? 0 : 2;
    if (o.threads > 0) dn_set_num_threads((int)o.threads);
    stop_flag = 0, steps_this_run = 0;
    signal(SIGINT, on_sig);
    signal(SIGTERM, on_sig);
    if (mkdir(o.out_dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "recall: cannot create %s: %s\n", o.out_dir, strerror(errno));
        return 1;
    }
    static recall_run runs[MAX_RUNS];
    int n = 0;
    if (o.resume) {
        if ((n = load_runs(&o, runs, MAX_RUNS)) < 0) return 1;
    } else if (append_run(&o, NULL, 1)) {
        return 1;
    }
    if (!o.quiet) {
        printf("MQAR: vocab %lld, %lld steps of %lld tokens per model, train slices (T/pairs) "
               "64/8 64/16 128/16 128/32 256/32 256/64\n",
               (long long)o.vocab, (long long)o.steps, (long long)o.batch_tokens);
        for (int i = 0; i < n; i++)
            print_table(stdout, &runs[i], 1);
    }
    int stopped = 0;
    for (int w = 0; w < o.n_widths && !stopped; w++)
        for (const char *mx = o.mixers; *mx && !stopped; mx++) {
            int have = 0;
            for (int i = 0; i < n; i++)
                have |= runs[i].mixer == *mx && runs[i].width == o.widths[w];
            if (have) continue;
            if (n >= MAX_RUNS) break;
            const int t = train_one(&o, *mx, o.widths[w], &runs[n]);
            if (t < 0) return 1;
            if (t > 0) {
                stopped = 1;
                break;
            }
            if (append_run(&o, &runs[n], 0)) return 1;
            char path[4096];
            ckpt_path(&o, *mx, o.widths[w], path, sizeof path);
            remove(path);
            if (!o.quiet) {
                printf("%s", isatty(1) ? "\r\033[K" : "");
                print_table(stdout, &runs[n], 1);
            }
            n++;
            write_outputs(&o, runs, n);
        }
    write_outputs(&o, runs, n);
    if (stopped) {
        if (!o.quiet)
            printf("\nstopped: the model in training is checkpointed in %s; continue with the "
                   "same options and --resume\n",
                   o.out_dir);
        return 0;
    }
    if (!o.quiet) {
        printf("\n");
        print_table(stdout, runs, n);
        printf("\n");
        print_quarters(stdout, runs, n);
        printf("wrote %s/recall.txt, recall.json, recall.svg, runs.tsv\n", o.out_dir);
    }
    return 0;
}
