package media

const sysSendmmsg = 269
