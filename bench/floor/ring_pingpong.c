/* ring_pingpong.c: the C ring alone (no Python) in the same sleeping ping-pong: two SPSC rings, spin_ns 0. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include "brk_ring.h"
static uint64_t now(void){ struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec*1000000000ull+t.tv_nsec; }
static int cmp(const void*a,const void*b){ uint64_t x=*(uint64_t*)a,y=*(uint64_t*)b; return x<y?-1:x>y; }
int main(int argc, char **argv){
  int gap = argc>1?atoi(argv[1]):0; int64_t spin = argc>2?atoll(argv[2]):0; int N=3000;
  brk_ring_spec sp[2] = {{BRK_KIND_SPSC,0,4096,0,0},{BRK_KIND_SPSC,0,4096,0,0}};
  uint64_t off[4], sz[4], total; brk_seg_layout(sp,2,off,sz,&total);
  void *base = mmap(NULL,total,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_ANONYMOUS,-1,0);
  brk_seg_format(base,total,sp,2,getpid(),0,NULL);
  char buf[64]={0};
  if (fork()==0){ brk_ring rx, tx; brk_ring_attach(&rx,base,total,0,BRK_ROLE_CONSUMER,getpid(),0); brk_ring_attach(&tx,base,total,1,BRK_ROLE_PRODUCER,getpid(),0);
    rx.spin_ns=tx.spin_ns=spin;
    for(int i=0;i<N;i++){ if(brk_recv_wait(&rx,buf,64,5000000000LL)) {printf("child fail\n"); _exit(1);} brk_send(&tx,buf,64);} _exit(0);}
  brk_ring tx, rx; brk_ring_attach(&tx,base,total,0,BRK_ROLE_PRODUCER,getpid(),0); brk_ring_attach(&rx,base,total,1,BRK_ROLE_CONSUMER,getpid(),0);
  rx.spin_ns=tx.spin_ns=spin;
  uint64_t *lat=malloc(N*8);
  for(int i=0;i<N;i++){ if(gap) usleep(gap); uint64_t t0=now(); brk_send(&tx,buf,64); if(brk_recv_wait(&rx,buf,64,5000000000LL)){printf("fail\n");return 1;} lat[i]=now()-t0; }
  wait(NULL); qsort(lat,N,8,cmp);
  printf("C ring ping-pong, %d us gaps, spin %lld ns: p50 %.1f us p99 %.1f us; sleeps %llu\n", gap, (long long)spin, lat[N/2]/1e3, lat[N*99/100]/1e3, (unsigned long long)rx.sleeps);
}
