# Independent check of the vault's fixed vector: HChaCha20 by hand + IETF ChaCha20-Poly1305 from `cryptography`.
import struct
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
def rotl(v,c): return ((v<<c)&0xffffffff)|(v>>(32-c))
def qr(s,a,b,c,d):
    s[a]=(s[a]+s[b])&0xffffffff; s[d]=rotl(s[d]^s[a],16)
    s[c]=(s[c]+s[d])&0xffffffff; s[b]=rotl(s[b]^s[c],12)
    s[a]=(s[a]+s[b])&0xffffffff; s[d]=rotl(s[d]^s[a],8)
    s[c]=(s[c]+s[d])&0xffffffff; s[b]=rotl(s[b]^s[c],7)
def hchacha(key, n16):
    s=[0x61707865,0x3320646e,0x79622d32,0x6b206574]+list(struct.unpack('<8I',key))+list(struct.unpack('<4I',n16))
    for _ in range(10):
        qr(s,0,4,8,12);qr(s,1,5,9,13);qr(s,2,6,10,14);qr(s,3,7,11,15)
        qr(s,0,5,10,15);qr(s,1,6,11,12);qr(s,2,7,8,13);qr(s,3,4,9,14)
    return struct.pack('<8I',*(s[0:4]+s[12:16]))
key=bytes(range(32)); nonce=bytes(0xa0+i for i in range(24))
ns=b"dev.keyshare.shared-secrets"; k=b"github.auth"
aad=b"keyshare/vault/value"+bytes([1])+struct.pack('>I',len(ns))+ns+struct.pack('>I',len(k))+k
sub=hchacha(key,nonce[:16])
ct=ChaCha20Poly1305(sub).encrypt(b"\0\0\0\0"+nonce[16:], b"gho_exampletoken", aad)
print((bytes([1])+nonce+ct).hex())
