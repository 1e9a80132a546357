/*
 * One build of an SSD kernel body for float and for double. The includer
 * defines ZM_SSD_BODY (the body's file name), ZM_SSD_WIDE (1: the AVX-512
 * build, 64-byte vectors, names suffixed _512; 0: 32-byte vectors, _256),
 * ZM_SSD_ATTR and ZM_SSD_TYPES (see _ssdchunk_impl.h); this file defines,
 * per element type, T, V, VW, S(name), ST(name), SV(name),
 * ZM_SSD_WALK_ARGS, ZM_EXP and ZM_DECAY_EXP, includes the body, and
 * undefines them. No include guard: that is the point.
 */

#define T float
#define ST(name) name##_f
#define ZM_SSD_WALK_ARGS zm_ssd_walk_args_f
#define ZM_EXP zm_expf
#define ZM_DECAY_EXP zm_decay_expf
#if ZM_SSD_WIDE
#define V zm_wf
#define VW ZM_WWF
#define S(name) name##_f_512
#define SV(name) name##_wf
#else
#define V zm_vf
#define VW ZM_VWF
#define S(name) name##_f_256
#define SV(name) name##_f
#endif
#include ZM_SSD_BODY
#undef T
#undef ST
#undef ZM_SSD_WALK_ARGS
#undef ZM_EXP
#undef ZM_DECAY_EXP
#undef V
#undef VW
#undef S
#undef SV

#define T double
#define ST(name) name##_d
#define ZM_SSD_WALK_ARGS zm_ssd_walk_args_d
#define ZM_EXP zm_exp
#define ZM_DECAY_EXP zm_decay_exp
#if ZM_SSD_WIDE
#define V zm_wd
#define VW ZM_WWD
#define S(name) name##_d_512
#define SV(name) name##_wd
#else
#define V zm_vd
#define VW ZM_VWD
#define S(name) name##_d_256
#define SV(name) name##_d
#endif
#include ZM_SSD_BODY
#undef T
#undef ST
#undef ZM_SSD_WALK_ARGS
#undef ZM_EXP
#undef ZM_DECAY_EXP
#undef V
#undef VW
#undef S
#undef SV
