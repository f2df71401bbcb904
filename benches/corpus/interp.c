/* A bytecode interpreter whose every instruction is a call through a table of function
 * pointers (indirect calls, small hot functions, a struct of machine state passed around), as
 * simple emulators and scripting engines are written. The program it runs sums the Collatz
 * sequence lengths of 1..N. stdin: N. */
#include <stdio.h>

enum { PUSH, LOAD, STORE, ADD, SUB, MUL, DIVMOD2, JZ, JMP, DUP, DROP, LT, HALT, OPS };

struct vm {
    long stack[64];
    int sp;
    int pc;
    long vars[8];
    const long *code;
    int running;
};

static void op_push(struct vm *m) { m->stack[m->sp++] = m->code[m->pc++]; }
static void op_load(struct vm *m) { m->stack[m->sp++] = m->vars[m->code[m->pc++]]; }
static void op_store(struct vm *m) { m->vars[m->code[m->pc++]] = m->stack[--m->sp]; }
static void op_add(struct vm *m) { m->sp--; m->stack[m->sp - 1] += m->stack[m->sp]; }
static void op_sub(struct vm *m) { m->sp--; m->stack[m->sp - 1] -= m->stack[m->sp]; }
static void op_mul(struct vm *m) { m->sp--; m->stack[m->sp - 1] *= m->stack[m->sp]; }
/* x -> x/2, x%2 */
static void op_divmod2(struct vm *m) {
    long x = m->stack[m->sp - 1];
    m->stack[m->sp - 1] = x / 2;
    m->stack[m->sp++] = x % 2;
}
static void op_jz(struct vm *m) {
    long target = m->code[m->pc++];
    if (m->stack[--m->sp] == 0) m->pc = (int)target;
}
static void op_jmp(struct vm *m) { m->pc = (int)m->code[m->pc]; }
static void op_dup(struct vm *m) { m->stack[m->sp] = m->stack[m->sp - 1]; m->sp++; }
static void op_drop(struct vm *m) { m->sp--; }
static void op_lt(struct vm *m) {
    m->sp--;
    m->stack[m->sp - 1] = m->stack[m->sp - 1] < m->stack[m->sp];
}
static void op_halt(struct vm *m) { m->running = 0; }

static void (*const ops[OPS])(struct vm *) = {
    op_push, op_load, op_store, op_add, op_sub, op_mul, op_divmod2,
    op_jz,   op_jmp,  op_dup,   op_drop, op_lt, op_halt,
};

static void run(struct vm *m) {
    m->running = 1;
    while (m->running) ops[m->code[m->pc++]](m);
}

int main(void) {
    long n;
    if (scanf("%ld", &n) != 1 || n < 1 || n > 100000000) {
        fprintf(stderr, "expected N on stdin\n");
        return 2;
    }
    /* vars: 0 = i, 1 = x, 2 = steps in total, 3 = n + 1; the program, assembled with labels. */
    long code[128];
    int at = 0;
#define EMIT(x) (code[at++] = (x))
    EMIT(PUSH); EMIT(1); EMIT(STORE); EMIT(0);             /* i = 1 */
    int loop = at;
    EMIT(LOAD); EMIT(0); EMIT(LOAD); EMIT(3); EMIT(LT);     /* i < n ? */
    EMIT(JZ); int exit_fixup = at; EMIT(0);
    EMIT(LOAD); EMIT(0); EMIT(STORE); EMIT(1);             /* x = i */
    int inner = at;
    EMIT(PUSH); EMIT(1); EMIT(LOAD); EMIT(1); EMIT(LT);     /* 1 < x ? */
    EMIT(JZ); int next_fixup = at; EMIT(0);
    EMIT(LOAD); EMIT(2); EMIT(PUSH); EMIT(1); EMIT(ADD); EMIT(STORE); EMIT(2); /* total++ */
    EMIT(LOAD); EMIT(1); EMIT(DIVMOD2);                    /* x/2, x%2 */
    EMIT(JZ); int even_fixup = at; EMIT(0);
    /* odd: x = 3x + 1 (the x/2 on the stack is dropped) */
    EMIT(DROP); EMIT(LOAD); EMIT(1); EMIT(PUSH); EMIT(3); EMIT(MUL); EMIT(PUSH); EMIT(1);
    EMIT(ADD); EMIT(STORE); EMIT(1); EMIT(JMP); EMIT(inner);
    code[even_fixup] = at;                                 /* even: x = x/2 */
    EMIT(STORE); EMIT(1); EMIT(JMP); EMIT(inner);
    code[next_fixup] = at;                                 /* i++ */
    EMIT(LOAD); EMIT(0); EMIT(PUSH); EMIT(1); EMIT(ADD); EMIT(STORE); EMIT(0);
    EMIT(JMP); EMIT(loop);
    code[exit_fixup] = at;
    EMIT(HALT);
#undef EMIT
    struct vm m = {.sp = 0, .pc = 0, .code = code};
    m.vars[3] = n + 1;
    run(&m);
    printf("interp %ld %ld\n", n, m.vars[2]);
    return 0;
}
